//! portcullis: a security gateway that puts authentication, security headers, CORS,
//! request hygiene and rate limits in front of any HTTP API, and refuses whatever it cannot
//! verify.
//!
//! The request path is assembled in [`pipeline::Gateway::handle`]; each stage lives in its
//! own module and can be read and tested on its own:
//!
//! | stage        | module                   |
//! |--------------|--------------------------|
//! | accept       | [`server`]               |
//! | context      | [`context`]              |
//! | hygiene      | [`hygiene`]              |
//! | liveness, readiness | [`health`]        |
//! | IP rules, bans | [`ip_rules`]           |
//! | CORS         | [`cors`]                 |
//! | authenticate, authorize | [`auth`], [`credentials`] |
//! | rate limit   | [`ratelimit`]            |
//! | forward      | [`upstream`]             |
//! | respond      | [`headers`]              |
//!
//! Every error portcullis itself produces is an RFC 9457 problem ([`problem`]). Every
//! request leaves one [`exchange`] record, with the gateway's precise decision, which sinks
//! such as the [`access_log`] receive with secrets already [`redact`]ed.
//!
//! Modules import downwards only (a test holds the crate to it): [`body`], [`exchange`],
//! [`redact`], [`access_log`], [`problem`] and [`config`] at the bottom; then the stores
//! and the stages (`store`, `credentials`, `hygiene`, `context`, `headers`, `cors`,
//! `ip_rules`, `auth`, `ratelimit`, `upstream`, `health`); then the [`pipeline`] that runs
//! them in order; then [`server`] and [`admin`]; then [`rules`] (the checks `check` and
//! `serve` apply to a configuration); the binary on top.
//! Managed credentials live in the [`store`] and are managed through the [`admin`] API or
//! the `portcullis token` command.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod context;
pub mod cors;
pub mod credentials;
pub mod demo;
pub mod exchange;
pub mod headers;
pub mod health;
pub mod hygiene;
pub mod ip_rules;
pub mod pipeline;
pub mod problem;
pub mod ratelimit;
pub mod redact;
pub mod rules;
pub mod server;
pub mod store;
pub mod upstream;
