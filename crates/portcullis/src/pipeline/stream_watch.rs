//! What an open stream was let through on, watched for as long as it stays open: the
//! credential that opened it must stay live, and its client's address unbanned.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Principal;
use crate::credentials::TokenVerifier;
use crate::ratelimit::Limiter;

/// How often a stream's address is rechecked against bans other replicas made, when no
/// credential sets the pace.
const BAN_RECHECK: Duration = Duration::from_secs(10);

/// Resolves when a stream opened by `principal` from `client` must close: its managed
/// credential was revoked, expired or rotated past its overlap (seen within the token cache
/// window), or the address was banned (at once when this process banned it; within the
/// recheck interval when another replica did, through Redis). A store that cannot be asked
/// closes nothing: open streams outlive an outage of the store, new requests do not.
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
        loop {
            let rechecking = tokio::select! {
                _ = tick.tick() => true,
                changed = bans.changed() => {
                    if changed.is_err() {
                        // The limits are gone with the server: nothing more to watch.
                        std::future::pending::<()>().await;
                    }
                    false
                }
            };
            if let Some(client) = client
                && limiter.check_ban(client).await.is_err()
            {
                return;
            }
            if rechecking
                && let (Some(id), Some(verifier)) = (&id, &verifier)
                && matches!(verifier.still_live(id).await, Ok(false))
            {
                return;
            }
        }
    }
}
