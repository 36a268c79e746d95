//! Windowed counters: every hit gets its exact ordinal, across processors and instances.
