//! What an open stream was let through on, watched for as long as it stays open: the
//! credential that opened it must stay live, and its client's address unbanned.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Principal;
use crate::credentials::TokenVerifier;
use crate::ratelimit::{Limiter, address_block};
use tokio::sync::broadcast::error::RecvError;

/// How often a stream's address is rechecked against bans other replicas made, when no
/// credential sets the pace.
const BAN_RECHECK: Duration = Duration::from_secs(10);

/// Resolves when a stream opened by `principal` from `client` must close: its managed
/// credential was revoked, expired or rotated past its overlap (seen within the token cache
/// window), or the address was banned (at once when this process banned it, compared in
/// memory; within the recheck interval when another replica did, through Redis). A store
/// that cannot be asked closes nothing: open streams outlive an outage of the store, new
/// requests do not.
pub fn revoked(
    limiter: Arc<Limiter>,
    verifier: Option<Arc<TokenVerifier>>,
    principal: &Principal,
    client: Option<IpAddr>,
) -> impl Future<Output = ()> + Send + 'static {
    let id = principal.managed_id().map(str::to_owned);
    async move {
        let mut bans = limiter.bans_made();
        let every = verifier
            .as_ref()
            .map_or(BAN_RECHECK, |verifier| verifier.recheck_interval());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let block = client.map(address_block);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                banned = bans.recv() => match banned {
                    Ok(banned) if Some(banned) == block => return,
                    Ok(_) => continue,
                    // Fell behind: the address is checked in full below.
                    Err(RecvError::Lagged(_)) => {}
                    // The limits are gone with the server: nothing more to watch.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
            }
            if let Some(client) = client
                && limiter.check_ban(client).await.is_err()
            {
                return;
            }
            if let (Some(id), Some(verifier)) = (&id, &verifier)
                && matches!(verifier.still_live(id).await, Ok(false))
            {
                return;
            }
        }
    }
}
