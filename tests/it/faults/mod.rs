//! The fault suite: each module injects one kind of fault for real (a full disk, a restarted
//! database, a poison push, hostile receivers and clients, runaway rules) and asserts what matters:
//! acknowledged versus stored, every job done once or dead-lettered, the service healthy after.

mod clients;
mod outbound;
mod poison;
mod rules;
mod storage;
