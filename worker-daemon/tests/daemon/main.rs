//! Integration tests of the worker daemon: the binary's CLI, and its runs against real `api-server`
//! processes on both database backends.

mod campaign;
mod cli;
mod faults;
mod harness;
mod runs;
