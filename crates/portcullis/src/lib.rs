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
//! | identity     | [`identity`]             |
//! | hygiene      | [`hygiene`]              |
//! | liveness, readiness | [`health`]        |
//! | route        | [`routes`]               |
//! | IP rules, bans | [`ip_rules`]           |
//! | CORS         | [`cors`]                 |
//! | authenticate, authorize | [`auth`], [`credentials`] |
//! | rate limit   | [`ratelimit`]            |
//! | forward      | [`upstream`], [`websocket`] |
//! | respond      | [`headers`]              |
//!
//! Every error portcullis itself produces is an RFC 9457 problem ([`base::problem`]).
//! Every request leaves one exchange record ([`base::exchange`]), with the gateway's
//! precise decision, which the [`recorder`] hands to sinks, the [`access_log`] and the
//! [`audit`] log, with secrets already [`redact`]ed.
//!
//! Modules import downwards only (a test holds the crate to it): [`base`] (the shared
//! types: bodies, problems, the request context, the exchange record) imports nothing;
//! [`config`] (plain settings) only `base`; then [`redact`], [`json_line`], the
//! [`recorder`], the [`access_log`] and the [`audit`] log; then the stores and the stages
//! (`store`, `credentials`, `hygiene`, `identity`, `headers`, `cors`, `ip_rules`, `auth`,
//! `ratelimit`, `streams`, `upstream`, `websocket`, `routes`, `health`); then [`settings`], the one validation
//! step that turns the configuration into the typed values the stages are built from;
//! then the [`pipeline`] that runs them in order; then [`server`] and [`admin`]; then
//! [`rules`] (the checks `check` and `serve` apply to a configuration); the binary on top.
//! Managed credentials live in the [`store`] and are managed through the [`admin`] API or
//! the `portcullis token` command.

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod base;
pub mod config;
pub mod cors;
pub mod credentials;
pub mod demo;
pub mod headers;
pub mod health;
pub mod hygiene;
pub mod identity;
pub mod ip_rules;
pub mod json_line;
pub mod pipeline;
pub mod ratelimit;
pub mod recorder;
pub mod redact;
pub mod routes;
pub mod rules;
pub mod server;
pub mod settings;
pub mod store;
pub mod streams;
pub mod upstream;
pub mod websocket;
