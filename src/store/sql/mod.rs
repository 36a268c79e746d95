//! The SQL both backends run alike, one module per topic, each holding its statements next to
//! the Rust that runs them. It is written once, for any sqlx database, as functions of [`Sql`];
//! what differs between SQLite and PostgreSQL (inserting events, claims, numbering counter
//! hits, LISTEN/NOTIFY) stays in the backends, and [`Backend`] holds the little that the shared
//! code must ask of each.
//!
//! The statements use `$N` placeholders, which SQLite reads too; those built with
//! `QueryBuilder` get each backend's own.

mod callbacks;
pub(crate) mod counters;
mod evaluations;
pub(crate) mod events;
mod instances;
mod jobs;
mod mutes;
mod overview;
mod prune;
mod quarantine;

use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::query::{Query, QueryAs};
use sqlx::sqlite::{SqliteArguments, SqliteQueryResult, SqliteRow};
use sqlx::{
    Database, Decode, Encode, FromRow, IntoArguments, Postgres, QueryBuilder, Sqlite, Type,
};
use std::marker::PhantomData;

/// The shared SQL, as functions over the sqlx database `DB`, which the pool or transaction
/// passed in decides: `Sql::get_job(&pool, id)`. Each topic module adds its functions in an
/// `impl<DB: Backend> Sql<DB>` block whose `where` clause says what they run on, bind and read
/// back (Rust does not let a trait such as [`Backend`] carry bounds on other types for them).
pub(crate) struct Sql<DB>(PhantomData<DB>);

/// A sqlx database the shared SQL runs on: SQLite or PostgreSQL.
pub(crate) trait Backend:
    Database<QueryResult: RowsAffected> + for<'q> Database<Arguments<'q>: IntoArguments<'q, Self>>
{
    /// Appended to a `SELECT` that must lock the rows it reads, where the backend can.
    const ROW_LOCK: &'static str;

    /// `qb.build()`, its arguments narrowed to the borrow of `qb`. An executor needs a query's
    /// arguments to have the query's own lifetime; the builder's have its longer one, and in
    /// generic code `DB::Arguments<'args>` cannot be shortened (a projection does not coerce),
    /// while each backend's concrete arguments can.
    fn build<'q>(qb: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, Self::Arguments<'q>>;

    /// `qb.build_query_as()`, likewise.
    fn build_query_as<'q, T: FromRow<'q, Self::Row>>(
        qb: &'q mut QueryBuilder<'_, Self>,
    ) -> QueryAs<'q, Self, T, Self::Arguments<'q>>;
}

impl Backend for Sqlite {
    /// The one writer connection already serializes writers.
    const ROW_LOCK: &'static str = "";

    fn build<'q>(qb: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, SqliteArguments<'q>> {
        qb.build()
    }

    fn build_query_as<'q, T: FromRow<'q, SqliteRow>>(
        qb: &'q mut QueryBuilder<'_, Self>,
    ) -> QueryAs<'q, Self, T, SqliteArguments<'q>> {
        qb.build_query_as()
    }
}

impl Backend for Postgres {
    const ROW_LOCK: &'static str = " FOR UPDATE";

    fn build<'q>(qb: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, PgArguments> {
        qb.build()
    }

    fn build_query_as<'q, T: FromRow<'q, PgRow>>(
        qb: &'q mut QueryBuilder<'_, Self>,
    ) -> QueryAs<'q, Self, T, PgArguments> {
        qb.build_query_as()
    }
}

/// A Rust type a backend binds as a parameter and reads back from a column.
pub(crate) trait Storable<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

impl<DB: Database, T> Storable<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

/// How many rows a statement changed (each backend's result has it; sqlx's trait does not).
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}
