//! How chains vouch for one another. A chain's first event (`chain_start`) names the head
//! of every chain in the store that no chain before it named at that point: the newest
//! checkpoint of each chain not yet named, or named at an earlier event. A running chain
//! then names, each minute, in a `follows` event, the newest checkpoint of every other
//! chain that wrote one since (a `portcullis token` command's, a PostgreSQL replica's).
//! Deleting any chain named, or cutting it short of the point named, then breaks a link
//! that the key covers ([`super::verify`]); only the points written since the last naming
//! are kept by their logged checkpoints alone.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use super::chain::{ChainKey, Checkpoint};
use super::event;
use super::store::{AuditStore, AuditStoreError};

/// A point a chain reached: its id, an event's sequence number and that event's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    /// The chain.
    pub chain: String,
    /// The event's sequence number (0 for a chain checkpointed before its first event).
    pub seq: i64,
    /// The event's hash.
    pub head: String,
}

impl From<Checkpoint> for ChainPoint {
    fn from(checkpoint: Checkpoint) -> Self {
        Self {
            chain: checkpoint.chain,
            seq: checkpoint.seq,
            head: checkpoint.head,
        }
    }
}

/// The kind of a chain's first event.
pub const CHAIN_START: &str = "chain_start";
/// The kind of the event a running chain names other chains' new points with.
pub const FOLLOWS: &str = "follows";

/// The payload of an event that names points of other chains (its kind and time are
/// columns).
#[derive(Serialize)]
struct Naming<'a> {
    follows: &'a [ChainPoint],
}

/// The payload of an event ([`CHAIN_START`] or [`FOLLOWS`]) naming `follows`.
pub fn naming_payload(follows: &[ChainPoint]) -> String {
    let naming = Naming { follows };
    // A struct of strings and numbers always serializes.
    serde_json::to_string(&naming).unwrap_or_default()
}

/// The newest signed checkpoint of each chain but `own` written at or after `since_ms`:
/// what a running chain names as it goes.
pub async fn checkpointed_since(
    store: &AuditStore,
    key: &ChainKey,
    since_ms: i64,
    own: &str,
) -> Result<Vec<ChainPoint>, AuditStoreError> {
    let mut newest: HashMap<String, Checkpoint> = HashMap::new();
    for checkpoint in store.checkpoints_since(since_ms, own).await? {
        let newer = newest
            .get(&checkpoint.chain)
            .is_none_or(|kept| kept.seq < checkpoint.seq);
        if newer && checkpoint.mac == key.seal(&checkpoint) {
            newest.insert(checkpoint.chain.clone(), checkpoint);
        }
    }
    let mut points: Vec<ChainPoint> = newest.into_values().map(ChainPoint::from).collect();
    points.sort_by(|a, b| a.chain.cmp(&b.chain));
    Ok(points)
}

/// The points a naming event names. Reads both forms: `follows`, a list, and the single
/// `previous_chain`, `previous_seq`, `previous_head` of chain starts written before it.
pub fn followed(payload: &Value) -> Vec<ChainPoint> {
    if let Some(follows) = payload.get("follows") {
        return serde_json::from_value(follows.clone()).unwrap_or_default();
    }
    match (
        payload["previous_chain"].as_str(),
        payload["previous_seq"].as_i64(),
        payload["previous_head"].as_str(),
    ) {
        (Some(chain), Some(seq), Some(head)) => vec![ChainPoint {
            chain: chain.to_owned(),
            seq,
            head: head.to_owned(),
        }],
        _ => Vec::new(),
    }
}

/// What a chain starting now in `store` must name: the newest signed checkpoint of each
/// chain that no signed naming event names at that point, unless a signed retention anchor
/// shows the chain trimmed through it. Only what the key signed counts, so that no forged
/// row steers it: a checkpoint forged as a chain's newest (to have it named short of its
/// end), a naming event forged to name a chain (so that no real one does), an anchor
/// forged to pass for its trimming.
pub async fn to_name(
    store: &AuditStore,
    key: &ChainKey,
) -> Result<Vec<ChainPoint>, AuditStoreError> {
    // A chain that starts after this read is named by this chain's first look, which
    // comes with its first batch (that chain's first batch is checkpointed at once).
    let namings = store.namings().await?;
    let anchors = store.all_anchors().await?;
    // Every chain: each starts with a naming event, or, trimmed past it, has an anchor.
    let chains: BTreeSet<&str> = namings
        .iter()
        .filter(|event| event.kind == CHAIN_START)
        .map(|event| event.chain_id.as_str())
        .chain(anchors.iter().map(|anchor| anchor.chain.as_str()))
        .collect();
    let mut newest: HashMap<String, Checkpoint> = store
        .newest_checkpoints()
        .await?
        .into_iter()
        .map(|checkpoint| (checkpoint.chain.clone(), checkpoint))
        .collect();
    let mut signed_heads = Vec::with_capacity(chains.len());
    for chain in chains {
        let head = match newest.remove(chain) {
            Some(head) if head.mac == key.seal(&head) => Some(head),
            None => None,
            Some(_) => {
                warn!(chain = %chain, "audit log: the newest checkpoint of a chain is not signed by this key (audit verify reports it); the newest signed one is named instead");
                let mut all = store.checkpoints(chain).await?;
                all.reverse();
                all.into_iter().find(|c| c.mac == key.seal(c))
            }
        };
        signed_heads.extend(head);
    }
    // A chain trimmed through its head has nothing left to name (the start that named it
    // may be trimmed too).
    let mut trimmed: HashMap<&str, i64> = HashMap::new();
    for anchor in anchors.iter().filter(|a| a.mac == key.seal_anchor(a)) {
        let through = trimmed.entry(anchor.chain.as_str()).or_insert(anchor.seq);
        *through = (*through).max(anchor.seq);
    }
    signed_heads.retain(|head| {
        trimmed
            .get(head.chain.as_str())
            .is_none_or(|through| *through < head.seq)
    });
    let signed_namings: Vec<&str> = namings
        .iter()
        .filter(|event| event::form(key, event).is_some())
        .map(|event| event.payload.as_str())
        .collect();
    Ok(unnamed(signed_heads, &signed_namings))
}

/// What a new chain must name: of `heads` (each chain's newest checkpoint), those that no
/// naming event among `namings` (their payloads) names at that point or later.
pub fn unnamed(heads: Vec<Checkpoint>, namings: &[&str]) -> Vec<ChainPoint> {
    let mut named: HashMap<String, i64> = HashMap::new();
    for payload in namings {
        let Ok(payload) = serde_json::from_str::<Value>(payload) else {
            continue;
        };
        for point in followed(&payload) {
            let seq = named.entry(point.chain).or_insert(point.seq);
            *seq = (*seq).max(point.seq);
        }
    }
    let mut points: Vec<ChainPoint> = heads
        .into_iter()
        .filter(|head| named.get(&head.chain).is_none_or(|seq| *seq < head.seq))
        .map(ChainPoint::from)
        .collect();
    // One point a chain (several checkpoints may sign the same event), in a stable order.
    points.sort_by(|a, b| a.chain.cmp(&b.chain));
    points.dedup_by(|a, b| a.chain == b.chain);
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(chain: &str, seq: i64) -> Checkpoint {
        Checkpoint {
            chain: chain.to_owned(),
            seq,
            head: format!("{chain}-{seq}"),
            time_ms: 0,
            mac: String::new(),
        }
    }

    fn point(chain: &str, seq: i64) -> ChainPoint {
        let head = head(chain, seq);
        ChainPoint {
            chain: head.chain,
            seq: head.seq,
            head: head.head,
        }
    }

    #[test]
    fn a_chain_names_every_head_no_chain_named_yet() {
        let starts = [naming_payload(&[]), naming_payload(&[point("gateway", 40)])];
        let heads = vec![
            // Named at 40, since checkpointed at 90: named again.
            head("gateway", 90),
            // A token command's chain, which no chain named.
            head("token-command", 2),
            // Named at its last checkpoint already.
            head("ended", 7),
        ];
        let ended = naming_payload(&[point("ended", 7)]);
        let starts = [starts[0].as_str(), &starts[1], &ended];
        assert_eq!(
            unnamed(heads, &starts),
            [point("gateway", 90), point("token-command", 2)]
        );
    }

    #[test]
    fn one_point_a_chain_however_many_checkpoints_sign_its_head() {
        assert_eq!(
            unnamed(vec![head("a", 3), head("a", 3)], &[]),
            [point("a", 3)]
        );
    }

    #[test]
    fn the_points_named_read_back_in_either_form() {
        let payload = naming_payload(&[point("a", 3), point("b", 0)]);
        let value: Value = serde_json::from_str(&payload).unwrap();
        // Its kind and time are columns of their own, not repeated here.
        assert_eq!(value.as_object().map(|fields| fields.len()), Some(1));
        assert_eq!(followed(&value), [point("a", 3), point("b", 0)]);

        let earlier: Value = serde_json::from_str(
            r#"{"kind":"chain_start","time_ms":5,"previous_chain":"a","previous_seq":3,"previous_head":"a-3"}"#,
        )
        .unwrap();
        assert_eq!(followed(&earlier), [point("a", 3)]);
        let first: Value = serde_json::from_str(
            r#"{"kind":"chain_start","time_ms":5,"previous_chain":null,"previous_seq":0,"previous_head":null}"#,
        )
        .unwrap();
        assert!(followed(&first).is_empty());
    }
}
