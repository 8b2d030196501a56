//! Integration tests of the API server: the real server over HTTP on loopback, on SQLite and on PostgreSQL.

mod helpers;

mod batches;
mod errors;
mod events;
mod health;
mod internal;
mod metrics;
mod pool;
mod reliability;
mod scale;
mod security;
mod server;
mod tasks;
mod ui;
mod workers;
