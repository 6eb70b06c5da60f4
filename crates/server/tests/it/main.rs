//! Integration tests of the `berth` binary: every test starts its own server
//! over its own data directory and talks to it over HTTP, as a client would.

mod auth_harness;
mod harness;
mod upstreams;

mod airgap;
mod auth;
mod auth_external;
mod auth_oidc;
mod backup;
mod bad_input;
mod base;
mod blobs;
mod cli;
mod config_check;
mod conformance;
mod durability;
mod errors;
mod hostile_paths;
mod inventory;
mod lifecycle;
mod lifecycle_gc;
mod limits;
mod listing;
mod manifests;
mod migrate;
mod mount;
mod openapi;
mod operations;
mod proxy;
mod proxy_faults;
mod proxy_upstreams;
mod referrers;
mod routes;
mod stress;
mod tls;
mod touches;
mod ui;
mod upload_races;
mod uploads;
mod webhooks;
