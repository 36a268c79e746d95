//! Slow, greedy and malformed clients: timeouts, connection limits, JSON errors, bounded admin input.
