//! The subcommands, each in one place with its flags and its `run`: `serve`, `audit`,
//! `demo`, `certs`, `forget` and `config check` (`crd` prints the record's CRD).

pub mod audit;
pub mod certs;
pub mod config;
pub mod demo;
pub mod forget;
pub mod serve;
