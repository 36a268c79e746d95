//! Outbound faults: receivers that fail, hang or redirect, SMTP down then up, private addresses refused.
