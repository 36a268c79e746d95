//! Storage faults: a full disk, a restarted PostgreSQL, kill -9 during intake, processing and delivery.
