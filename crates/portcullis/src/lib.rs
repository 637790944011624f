//! portcullis: a security gateway that puts authentication, security headers, CORS and
//! request hygiene in front of any HTTP API, and refuses whatever it cannot verify.
//!
//! The request path is assembled in [`pipeline::Gateway::handle`]; each stage lives in its
//! own module and can be read and tested on its own:
//!
//! | stage        | module                   |
//! |--------------|--------------------------|
//! | accept       | [`server`]               |
//! | context      | [`pipeline::context`]    |
//! | hygiene      | [`pipeline::hygiene`]    |
//! | CORS         | [`pipeline::cors`]       |
//! | authenticate | [`pipeline::auth`]       |
//! | forward      | [`upstream`]             |
//! | respond      | [`pipeline::headers`]    |
//!
//! Every error portcullis itself produces is an RFC 9457 problem ([`pipeline::problem`]).

pub mod admin;
pub mod body;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod pipeline;
pub mod server;
pub mod store;
pub mod upstream;
