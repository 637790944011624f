//! Integration tests: each starts the real `portcullis` binary in front of a real upstream
//! and checks what clients and the upstream see.

// Test helpers outside `#[test]` functions may panic on a broken harness too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod access_log;
mod admin;
mod admin_fuzz;
mod audit;
mod audit_bodies;
mod audit_outage;
mod audit_query;
mod audit_retention;
mod audit_strict;
mod auth;
mod breaker;
mod cli;
mod cors;
mod edges;
mod headers;
mod health_checks;
mod hygiene;
mod identity;
mod ip_rules;
mod layers;
mod lifecycle;
mod managed;
mod mcp;
mod mcp_conformance;
mod outline_client;
mod proxy;
mod python_peers;
mod ratelimit;
mod retry;
mod streams;
mod tls;
mod upstream_credentials;
mod upstream_http2;
mod upstream_tls;
mod websocket;
