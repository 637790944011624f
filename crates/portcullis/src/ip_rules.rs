//! IP rules and bans: per-route allow and deny lists, and a temporary ban for an address
//! that keeps failing authentication.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::base::problem::{Problem, ProblemKind};

/// A route's address lists. An address in `deny` is refused; when `allow` is not empty,
/// only addresses in it are let through.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRules {
    /// Rules from the two lists.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    /// Refuses the client with 403 unless the rules let it through; `None` is a client
    /// whose address is unknown, which no rule can vouch for.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Problem> {
        let refused = match ip {
            Some(ip) => {
                self.deny.iter().any(|net| net.contains(&ip))
                    || (!self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)))
            }
            None => !self.allow.is_empty() || !self.deny.is_empty(),
        };
        if refused {
            Err(Problem::new(ProblemKind::IpDenied)
                .with_detail("requests from this address are not allowed here"))
        } else {
            Ok(())
        }
    }
}

/// When authentication failures lead to a ban.
#[derive(Debug, Clone, Copy)]
pub struct BanPolicy {
    /// Failures within `window` that trigger a ban; 0 turns bans off.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a ban lasts; it is lifted automatically.
    pub duration: Duration,
}

/// Most addresses tracked at once, so a flood cannot exhaust memory. When the table is
/// full, stale entries go first, then the least-failing addresses that are not banned
/// ([`EVICTED_AT_ONCE`] at a time, so a flood pays for a scan rarely), and only when hardly
/// anything but live bans is left, the bans that end soonest; a new failure is always
/// recorded, so a full table never lets an attacker fail without counting.
const MAX_TRACKED: usize = 100_000;

/// How many live entries one eviction removes when the table is full.
const EVICTED_AT_ONCE: usize = MAX_TRACKED / 100;

#[derive(Debug, Clone, Copy)]
struct Record {
    window_start: Instant,
    failures: u32,
    banned_until: Option<Instant>,
}

/// Authentication failures per address, and the bans they caused; shared by every worker.
#[derive(Debug)]
pub struct Bans {
    policy: BanPolicy,
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl Bans {
    /// Bans under `policy`.
    pub fn new(policy: BanPolicy) -> Self {
        Self {
            policy,
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a banned `ip` with 429 and `Retry-After`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Problem> {
        if self.policy.max_failures == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let banned_until = self
            .records()
            .get(&ip)
            .and_then(|r| r.banned_until)
            .filter(|until| *until > now);
        match banned_until {
            None => Ok(()),
            Some(until) => Err(Self::refusal(until - now)),
        }
    }

    /// The 429 for an address banned for `remaining` more.
    pub fn refusal(remaining: Duration) -> Problem {
        Problem::new(ProblemKind::Banned)
            .with_detail("too many failed authentication attempts from this address")
            .with_retry_after(remaining)
    }

    /// When failures lead to a ban.
    pub fn policy(&self) -> BanPolicy {
        self.policy
    }

    /// The table, even after a thread panicked holding it: a ban check must never pass,
    /// nor a failure go uncounted, because of a poisoned lock. Every change to the table
    /// is one map operation, so what a panic leaves behind is still a valid table.
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Record>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `ip`'s entry in `records`, made (room made for it when the table is full) if new.
    fn entry<'r>(
        &self,
        records: &'r mut HashMap<IpAddr, Record>,
        ip: IpAddr,
        now: Instant,
    ) -> &'r mut Record {
        if records.len() >= MAX_TRACKED && !records.contains_key(&ip) {
            make_room(records, self.policy, now);
        }
        records.entry(ip).or_insert(Record {
            window_start: now,
            failures: 0,
            banned_until: None,
        })
    }

    /// Holds a ban of `ip` for `remaining` more (at least), made elsewhere: by this process
    /// in Redis, or by another replica there. Kept here too, so that it still holds while
    /// Redis cannot be asked.
    pub fn hold(&self, ip: IpAddr, remaining: Duration) {
        if self.policy.max_failures == 0 {
            return;
        }
        let mut records = self.records();
        let now = Instant::now();
        let record = self.entry(&mut records, ip, now);
        let until = now + remaining;
        record.banned_until = Some(record.banned_until.map_or(until, |held| held.max(until)));
    }

    /// Counts an authentication failure from `ip`, banning it when the policy says so;
    /// whether it did.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        if self.policy.max_failures == 0 {
            return false;
        }
        let mut records = self.records();
        let now = Instant::now();
        let record = self.entry(&mut records, ip, now);
        if now.duration_since(record.window_start) >= self.policy.window {
            record.window_start = now;
            record.failures = 0;
        }
        record.failures += 1;
        if record.failures >= self.policy.max_failures {
            record.banned_until = Some(now + self.policy.duration);
            record.failures = 0;
            record.window_start = now;
            tracing::warn!(%ip, ban = ?self.policy.duration, "address banned after repeated authentication failures");
            return true;
        }
        false
    }
}

/// Frees room in a full table: drops what has expired, and when that is not enough, the
/// [`EVICTED_AT_ONCE`] entries that matter least: addresses that are not banned, fewest
/// failures first, then bans that end soonest.
fn make_room(records: &mut HashMap<IpAddr, Record>, policy: BanPolicy, now: Instant) {
    records.retain(|_, r| {
        now.duration_since(r.window_start) < policy.window
            || r.banned_until.is_some_and(|until| until > now)
    });
    if records.len() < MAX_TRACKED {
        return;
    }
    // Banned entries rank after every unbanned one; among them, the one ending first goes.
    let rank = |r: &Record| match r.banned_until {
        None => (false, r.failures, r.window_start),
        Some(until) => (true, 0, until),
    };
    let mut ranked: Vec<_> = records.iter().map(|(ip, r)| (rank(r), *ip)).collect();
    let evicted = EVICTED_AT_ONCE.min(ranked.len());
    ranked.select_nth_unstable_by_key(evicted - 1, |(rank, _)| *rank);
    for (_, ip) in &ranked[..evicted] {
        records.remove(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_allow_lists_are_exclusive() {
        let rules = IpRules::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec!["10.0.0.66/32".parse().unwrap()],
        );
        assert!(rules.check(Some(ip("10.1.2.3"))).is_ok());
        assert_eq!(
            rules.check(Some(ip("10.0.0.66"))).unwrap_err().kind(),
            ProblemKind::IpDenied
        );
        assert_eq!(
            rules.check(Some(ip("192.0.2.1"))).unwrap_err().kind(),
            ProblemKind::IpDenied
        );
        assert!(IpRules::default().check(Some(ip("192.0.2.1"))).is_ok());
        assert!(
            rules.check(None).is_err(),
            "an unknown client matches no allow list"
        );
        assert!(IpRules::default().check(None).is_ok());
    }

    /// A ban made elsewhere (Redis) and held here: it refuses, and a shorter one does not
    /// shorten it.
    #[test]
    fn a_ban_held_from_elsewhere_refuses_until_it_ends() {
        let bans = Bans::new(BanPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
        });
        let banned = ip("198.51.100.9");
        assert!(bans.check(banned).is_ok());
        bans.hold(banned, Duration::from_secs(30));
        bans.hold(banned, Duration::from_secs(1));
        let refusal = bans.check(banned).unwrap_err();
        assert_eq!(refusal.kind(), ProblemKind::Banned);
        let answer = refusal.into_response(&http::HeaderValue::from_static("id"));
        let wait: u64 = answer.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((29..=30).contains(&wait), "{wait}");
        assert!(bans.check(ip("198.51.100.10")).is_ok());
        bans.hold(ip("198.51.100.11"), Duration::ZERO);
        assert!(
            bans.check(ip("198.51.100.11")).is_ok(),
            "a ban already over"
        );
    }

    #[test]
    fn repeated_failures_ban_and_the_ban_lifts() {
        let bans = Bans::new(BanPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_millis(200),
        });
        let attacker = ip("192.0.2.9");
        for _ in 0..2 {
            bans.record_failure(attacker);
        }
        assert!(bans.check(attacker).is_ok(), "under the threshold");
        bans.record_failure(attacker);
        let refusal = bans.check(attacker).unwrap_err();
        assert_eq!(refusal.kind(), ProblemKind::Banned);
        assert!(
            bans.check(ip("192.0.2.10")).is_ok(),
            "others are not affected"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(bans.check(attacker).is_ok(), "the ban lifted");
    }

    #[test]
    fn a_full_table_keeps_counting_and_keeps_its_bans() {
        let bans = Bans::new(BanPolicy {
            max_failures: 3,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(600),
        });
        let banned = ip("192.0.2.66");
        for _ in 0..3 {
            bans.record_failure(banned);
        }
        let repeat = ip("192.0.2.77");
        bans.record_failure(repeat);
        bans.record_failure(repeat);
        // A flood of single failures from fresh addresses fills the table and more.
        for n in 0..(MAX_TRACKED as u32 + 50) {
            bans.record_failure(IpAddr::V4((0x0a00_0000 + n).into()));
        }
        assert!(bans.records().len() <= MAX_TRACKED);
        assert_eq!(
            bans.check(banned).unwrap_err().kind(),
            ProblemKind::Banned,
            "a ban outlives the flood"
        );
        bans.record_failure(repeat);
        assert_eq!(
            bans.check(repeat).unwrap_err().kind(),
            ProblemKind::Banned,
            "failures before the flood still count"
        );
        let late = ip("198.51.100.1");
        for _ in 0..3 {
            bans.record_failure(late);
        }
        assert!(bans.check(late).is_err(), "a full table still bans");
    }

    #[test]
    fn a_poisoned_table_still_bans_and_still_counts() {
        let bans = Bans::new(BanPolicy {
            max_failures: 2,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
        });
        let banned = ip("192.0.2.1");
        bans.record_failure(banned);
        bans.record_failure(banned);
        let poisoner = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _held = bans.records.lock().unwrap();
                    panic!("a worker panics while holding the ban table");
                })
                .join()
        });
        assert!(poisoner.is_err());
        assert!(bans.records.is_poisoned());
        assert_eq!(bans.check(banned).unwrap_err().kind(), ProblemKind::Banned);
        let next = ip("192.0.2.2");
        bans.record_failure(next);
        bans.record_failure(next);
        assert_eq!(bans.check(next).unwrap_err().kind(), ProblemKind::Banned);
    }

    #[test]
    fn zero_failures_turns_bans_off() {
        let bans = Bans::new(BanPolicy {
            max_failures: 0,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
        });
        for _ in 0..100 {
            bans.record_failure(ip("192.0.2.1"));
        }
        assert!(bans.check(ip("192.0.2.1")).is_ok());
    }
}
