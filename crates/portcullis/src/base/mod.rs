//! The types every layer shares, and nothing else: the body types, problems (what a client
//! is told), the request context (what every stage knows about a request), the exchange
//! record with its decision codes (what the gateway keeps), the hex they are written in,
//! durations as people type them, and how long a wait has gone without progress. Nothing here imports anything from the rest of the
//! crate, so every module may import it.

pub mod body;
pub mod context;
pub mod duration;
pub mod exchange;
pub mod hex;
pub mod problem;
pub mod stall;
