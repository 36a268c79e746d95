//! Telling a failure of the store itself (a lost connection, a restarting server, a full disk,
//! a lock) from one that the data of a particular call causes: the processor retries the first
//! kind without blaming the events it was recording, and counts the second against them.

use super::StoreError;

impl StoreError {
    /// True when the store itself failed (connection, server, disk, locks, pool): nothing about
    /// the data of the call, which may well succeed once the store recovers. False when the
    /// database refused this data (a constraint, a type, an encoding) or it could not be
    /// encoded or read back.
    pub fn is_store_fault(&self) -> bool {
        match self {
            StoreError::Database(error) => sqlx_store_fault(error),
            StoreError::Migrate(_)
            | StoreError::UnsupportedUrl(_)
            | StoreError::Io { .. }
            | StoreError::Open { .. }
            | StoreError::InvalidUrlOption(_) => true,
            StoreError::Corrupt { .. } => false,
        }
    }
}

fn sqlx_store_fault(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        {
            Some(pg) => postgres_fault(pg.code()),
            None => db
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(sqlite_fault),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        | sqlx::Error::Configuration(_) => true,
        _ => false,
    }
}

/// SQLite extended result codes that say the database, not the data, failed (the primary code
/// is the low byte).
fn sqlite_fault(extended: i32) -> bool {
    matches!(
        extended & 0xff,
        5 /* BUSY */ | 6 /* LOCKED */ | 7 /* NOMEM */ | 8 /* READONLY */
            | 10 /* IOERR */ | 11 /* CORRUPT */ | 13 /* FULL */ | 14 /* CANTOPEN */
            | 15 /* PROTOCOL */ | 26 /* NOTADB */
    )
}

/// PostgreSQL SQLSTATEs that say the server, not the data, failed: classes 08 connection, 25
/// transaction state, 40 rollback (serialization, deadlock), 53 insufficient resources (disk
/// full, memory), 57 operator intervention (shutdown, cancel), 58 system (I/O); and 55P03, a
/// lock not available.
fn postgres_fault(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "25" | "40" | "53" | "57" | "58")) || code == "55P03"
}

#[cfg(test)]
mod tests {
    use super::{postgres_fault, sqlite_fault};

    #[test]
    fn database_codes() {
        assert!(sqlite_fault(5)); // SQLITE_BUSY
        assert!(sqlite_fault(266)); // SQLITE_IOERR_READ
        assert!(sqlite_fault(13)); // SQLITE_FULL
        assert!(!sqlite_fault(1811)); // SQLITE_CONSTRAINT_TRIGGER
        assert!(!sqlite_fault(2067)); // SQLITE_CONSTRAINT_UNIQUE
        assert!(postgres_fault("57P01")); // admin_shutdown
        assert!(postgres_fault("08006")); // connection_failure
        assert!(postgres_fault("53100")); // disk_full
        assert!(!postgres_fault("22021")); // invalid byte sequence (a NUL in text)
        assert!(!postgres_fault("P0001")); // raise_exception
        assert!(!postgres_fault("54000")); // program_limit_exceeded (an index row too big)
    }
}
