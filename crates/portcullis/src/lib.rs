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
//! | context      | [`pipeline::context`]    |
//! | hygiene      | [`pipeline::hygiene`]    |
//! | IP rules, bans | [`pipeline::ip_rules`] |
//! | CORS         | [`pipeline::cors`]       |
//! | authenticate, authorize | [`pipeline::auth`], [`credentials`] |
//! | rate limit   | [`ratelimit`]            |
//! | forward      | [`upstream`]             |
//! | respond      | [`pipeline::headers`]    |
//!
//! Every error portcullis itself produces is an RFC 9457 problem ([`pipeline::problem`]).
//! Every request leaves one [`exchange`] record, with the gateway's precise decision, which
//! sinks such as the [`access_log`] receive with secrets already [`redact`]ed.
//! Managed credentials live in the [`store`] and are managed through the [`admin`] API or
//! the `portcullis token` command.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod exchange;
pub mod pipeline;
pub mod ratelimit;
pub mod redact;
pub mod server;
pub mod store;
pub mod upstream;
