//! How chains vouch for one another. A chain's first event (`chain_start`) names the head
//! of every chain in the store that no chain before it named at that point: the newest
//! checkpoint of each chain not yet named, or named at an earlier event. Deleting any of
//! them whole, or cutting it short of the point named, then breaks a link that the key
//! covers ([`super::verify`]). A `portcullis token` command's chain, run while a gateway
//! checkpoints every minute, and a PostgreSQL replica's, are named by the next chain to
//! start, whichever process writes it; the last chains to start are kept by their logged
//! checkpoints alone.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use super::chain::{ChainKey, Checkpoint, GENESIS};
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

/// The payload of a `chain_start` event: what the chain follows.
#[derive(Serialize)]
struct ChainStart<'a> {
    kind: &'static str,
    time_ms: i64,
    follows: &'a [ChainPoint],
}

/// The canonical JSON of a chain's first event, started at `time_ms`, naming `follows`.
pub fn chain_start_payload(time_ms: i64, follows: &[ChainPoint]) -> String {
    let start = ChainStart {
        kind: "chain_start",
        time_ms,
        follows,
    };
    // A struct of strings and numbers always serializes.
    serde_json::to_string(&start).unwrap_or_default()
}

/// The points a chain's first event names. Reads both forms: `follows`, a list, and the
/// single `previous_chain`, `previous_seq`, `previous_head` of logs written before it.
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

/// What a chain starting now in `store` must name. Only what the key signed counts: a
/// checkpoint forged to stand in for a chain's newest (so that the chain is named short of
/// its end, or not at all), or a first event forged to name a chain (so that no real one
/// does), is passed over.
pub async fn to_name(
    store: &AuditStore,
    key: &ChainKey,
) -> Result<Vec<ChainPoint>, AuditStoreError> {
    let (newest, starts) = tokio::try_join!(store.chain_heads(), store.chain_starts())?;
    let mut heads: HashMap<String, Option<Checkpoint>> = HashMap::new();
    for checkpoint in newest {
        let signed = checkpoint.mac == key.seal(&checkpoint);
        let slot = heads.entry(checkpoint.chain.clone()).or_default();
        if signed && slot.is_none() {
            *slot = Some(checkpoint);
        }
    }
    let mut signed_heads = Vec::with_capacity(heads.len());
    for (chain, head) in heads {
        let head = match head {
            Some(head) => Some(head),
            None => {
                warn!(chain = %chain, "audit log: the newest checkpoint of a chain is not signed by this key (audit verify reports it); the newest signed one is named instead");
                let mut all = store.checkpoints(&chain).await?;
                all.reverse();
                all.into_iter().find(|c| c.mac == key.seal(c))
            }
        };
        signed_heads.extend(head);
    }
    let signed_starts: Vec<&str> = starts
        .iter()
        .filter(|event| {
            event.prev_hash == GENESIS
                && event.hash == key.link(&event.chain_id, event.seq, GENESIS, &event.payload)
        })
        .map(|event| event.payload.as_str())
        .collect();
    Ok(unnamed(signed_heads, &signed_starts))
}

/// What a new chain must name: of `heads` (each chain's newest checkpoint), those that no
/// chain's first event among `starts` (their payloads) names at that point or later.
pub fn unnamed(heads: Vec<Checkpoint>, starts: &[&str]) -> Vec<ChainPoint> {
    let mut named: HashMap<String, i64> = HashMap::new();
    for payload in starts {
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
        .map(|head| ChainPoint {
            chain: head.chain,
            seq: head.seq,
            head: head.head,
        })
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
        let starts = [
            chain_start_payload(1, &[]),
            chain_start_payload(2, &[point("gateway", 40)]),
        ];
        let heads = vec![
            // Named at 40, since checkpointed at 90: named again.
            head("gateway", 90),
            // A token command's chain, which no chain named.
            head("token-command", 2),
            // Named at its last checkpoint already.
            head("ended", 7),
        ];
        let ended = chain_start_payload(3, &[point("ended", 7)]);
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
        let payload = chain_start_payload(5, &[point("a", 3), point("b", 0)]);
        let value: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(value["kind"], "chain_start");
        assert_eq!(value["time_ms"], 5);
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
