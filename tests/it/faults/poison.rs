//! Poison pushes: nothing accepted is unreadable, and an event that cannot be processed is quarantined on its own.
