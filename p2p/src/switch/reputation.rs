//! Reputation by identity: each NodeId's score (decaying with a
//! half-life), its ban and its ban tier, kept across reconnects, bounded in
//! size, and saved and restored in wall-clock terms (the node saves it with
//! the address book). Sans-IO: every call takes `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::PeerManagerConfig;
use crate::fault::{BanClass, Misbehavior};
use crate::key::NodeId;

/// One identity's standing.
#[derive(Debug, Clone)]
struct Entry {
    /// Score at `updated`.
    score: f64,
    updated: Instant,
    banned_until: Option<Instant>,
    /// Bans so far in the current repeat run (0 = never banned).
    bans: u32,
    /// When the last ban ended (or ends).
    last_ban_end: Option<Instant>,
    /// Length of the last ban the score earned (a repeat doubles it).
    last_ban_len: Duration,
}

/// The outcome of a reported misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The score after the report.
    pub score: f64,
    /// Whether the connection should close.
    pub disconnect: bool,
    /// The ban imposed by this report, if it tipped the score over.
    pub ban: Option<Duration>,
}

/// The saved form of one identity's reputation (JSON in the address book
/// file): the score and the remaining ban as of `saved_at`, unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReputationRecord {
    /// The identity.
    pub id: NodeId,
    /// Score at `saved_at`.
    pub score: f64,
    /// Ban seconds left at `saved_at` (0 = not banned).
    pub ban_left_s: u64,
    /// Bans in the current repeat run.
    pub bans: u32,
    /// Seconds since the last ban ended, at `saved_at` (absent if never
    /// banned or still banned).
    #[serde(default)]
    pub since_ban_s: Option<u64>,
    /// Length of the last ban the score earned, seconds.
    #[serde(default)]
    pub last_ban_s: u64,
    /// Unix time of the snapshot, seconds.
    pub saved_at: u64,
}

/// Scores, bans and tiers by NodeId.
#[derive(Debug)]
pub(crate) struct Reputation {
    entries: HashMap<NodeId, Entry>,
}

impl Reputation {
    /// Identities remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn new() -> Self {
        Reputation { entries: HashMap::new() }
    }

    fn decayed(cfg: &PeerManagerConfig, e: &Entry, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(e.updated).as_secs_f64();
        e.score * 0.5f64.powf(dt / cfg.score_half_life.as_secs_f64())
    }

    /// The score of `id` now (0 for an unknown id).
    pub(crate) fn score(&self, cfg: &PeerManagerConfig, id: &NodeId, now: Instant) -> f64 {
        self.entries.get(id).map_or(0.0, |e| Self::decayed(cfg, e, now))
    }

    /// When the ban on `id` ends, if one is in force.
    pub(crate) fn banned_until(&self, id: &NodeId, now: Instant) -> Option<Instant> {
        self.entries.get(id)?.banned_until.filter(|t| *t > now)
    }

    fn entry(&mut self, cfg: &PeerManagerConfig, id: NodeId, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&id) && self.entries.len() >= cfg.reputation_capacity {
            self.shrink(cfg, now);
        }
        let e = self.entries.entry(id).or_insert(Entry {
            score: 0.0,
            updated: now,
            banned_until: None,
            bans: 0,
            last_ban_end: None,
            last_ban_len: Duration::ZERO,
        });
        e.score = Self::decayed(cfg, e, now);
        e.updated = now;
        e
    }

    /// Drops the least recently touched tenth of the table (identities no
    /// longer banned first), so inserts stay cheap on average.
    fn shrink(&mut self, cfg: &PeerManagerConfig, now: Instant) {
        let mut by_age: Vec<(bool, Instant, NodeId)> = self
            .entries
            .iter()
            .map(|(id, e)| (e.banned_until.is_some_and(|t| t > now), e.updated, *id))
            .collect();
        by_age.sort();
        let drop = (cfg.reputation_capacity / 10).max(1);
        for (_, _, id) in by_age.into_iter().take(drop) {
            self.entries.remove(&id);
        }
    }

    /// Adds `kind`'s weight to `id`'s score; bans when the score first
    /// reaches the threshold. A `protected` identity (persistent or
    /// unconditional) has its score capped at the threshold and its ban at
    /// `protected_ban_max`, and its tier never grows.
    pub(crate) fn report(
        &mut self,
        cfg: &PeerManagerConfig,
        id: NodeId,
        kind: Misbehavior,
        protected: bool,
        now: Instant,
    ) -> Verdict {
        let threshold = f64::from(cfg.ban_threshold);
        let e = self.entry(cfg, id, now);
        if e.banned_until.is_some_and(|t| t > now) {
            // Already banned (its last messages still arriving): the ban is
            // the penalty; piling up points would make the first offence
            // after it a foregone ban.
            return Verdict { score: e.score, disconnect: true, ban: None };
        }
        e.score += f64::from(kind.weight());
        if protected {
            e.score = e.score.min(threshold);
        }
        let mut ban = None;
        // Compared rounded: the decay between two quick reports (50 is
        // 49.9999 a moment later) is no reprieve.
        if e.score.round() >= threshold {
            let first = match kind.class() {
                BanClass::Protocol => cfg.ban_protocol_error,
                BanClass::RateLimit => cfg.ban_rate_limit,
                BanClass::Consensus => cfg.ban_consensus_error,
            };
            let repeat = e
                .last_ban_end
                .is_some_and(|end| now.saturating_duration_since(end) <= cfg.ban_repeat_window);
            if !repeat {
                e.bans = 0;
            }
            // A repeat doubles the last ban whatever the class of this
            // offence (a consensus ban and then a protocol error is not a
            // shorter ban); a first ban is the class's.
            let dur = if protected {
                first.min(cfg.protected_ban_max)
            } else {
                let base = if e.bans == 0 { first } else { first.max(e.last_ban_len * 2) };
                e.bans = e.bans.saturating_add(1);
                base.min(cfg.ban_max.max(first))
            };
            e.last_ban_len = dur;
            let until = now.checked_add(dur).unwrap_or(now);
            e.banned_until = Some(until);
            e.last_ban_end = Some(until);
            // The ban is the penalty; the score starts over below it so a
            // returning identity gets one more chance before the next tier.
            e.score = threshold / 2.0;
            ban = Some(dur);
        }
        Verdict { score: e.score, disconnect: kind.disconnects() || ban.is_some(), ban }
    }

    /// Bans `id` for `dur` (the application's own decision), never
    /// shortening a ban in force.
    pub(crate) fn ban(&mut self, cfg: &PeerManagerConfig, id: NodeId, dur: Duration, now: Instant) {
        let e = self.entry(cfg, id, now);
        let until = now.checked_add(dur).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        let until = e.banned_until.map_or(until, |t| t.max(until));
        e.banned_until = Some(until);
        e.last_ban_end = Some(e.last_ban_end.map_or(until, |t| t.max(until)));
    }

    /// Forgets entries that carry nothing any more (score under 1, no ban
    /// in force, no repeat run within its window).
    pub(crate) fn prune(&mut self, cfg: &PeerManagerConfig, now: Instant) {
        self.entries.retain(|_, e| {
            let banned = e.banned_until.is_some_and(|t| t > now);
            let repeat = e
                .last_ban_end
                .is_some_and(|end| now.saturating_duration_since(end) <= cfg.ban_repeat_window);
            banned || repeat || Self::decayed(cfg, e, now) >= 1.0
        });
    }

    /// The saved form, as of `now` and unix time `wall` (seconds).
    pub(crate) fn snapshot(
        &self,
        cfg: &PeerManagerConfig,
        now: Instant,
        wall: u64,
    ) -> Vec<ReputationRecord> {
        let mut v: Vec<ReputationRecord> = self
            .entries
            .iter()
            .map(|(id, e)| {
                let ban_left =
                    e.banned_until.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                let since_ban = e
                    .last_ban_end
                    .filter(|t| *t <= now)
                    .map(|t| now.saturating_duration_since(t).as_secs());
                ReputationRecord {
                    id: *id,
                    score: Self::decayed(cfg, e, now),
                    ban_left_s: ban_left.as_secs() + u64::from(ban_left.subsec_nanos() > 0),
                    bans: e.bans,
                    since_ban_s: since_ban,
                    last_ban_s: e.last_ban_len.as_secs(),
                    saved_at: wall,
                }
            })
            .collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// Takes saved records back: the time between `saved_at` and `wall`
    /// (unix seconds now) decays the scores and runs down the bans.
    /// Records with a non-finite or negative score are skipped.
    pub(crate) fn restore(
        &mut self,
        cfg: &PeerManagerConfig,
        records: &[ReputationRecord],
        now: Instant,
        wall: u64,
    ) {
        for r in records {
            if !r.score.is_finite() || r.score < 0.0 {
                continue;
            }
            // Values from disk are clamped to what this node could have
            // written, so an edited or corrupt file cannot overflow a clock.
            let longest = cfg.ban_max.max(cfg.ban_consensus_error).max(Duration::from_secs(1));
            let window = cfg.ban_repeat_window + Duration::from_secs(1);
            let away = Duration::from_secs(wall.saturating_sub(r.saved_at)).min(window + longest);
            let score =
                r.score * 0.5f64.powf(away.as_secs_f64() / cfg.score_half_life.as_secs_f64());
            let saved_left = Duration::from_secs(r.ban_left_s).min(longest);
            let ban_left = saved_left.saturating_sub(away);
            let banned_until = (!ban_left.is_zero()).then(|| now + ban_left);
            let ago = |d: Duration| now.checked_sub(d.min(window + longest));
            let last_ban_end = match (banned_until, r.since_ban_s) {
                (Some(t), _) => Some(t),
                (None, Some(s)) => ago(Duration::from_secs(s).min(window) + away),
                (None, None) if !saved_left.is_zero() => ago(away - saved_left),
                (None, None) => None,
            };
            if self.entries.len() >= cfg.reputation_capacity {
                self.shrink(cfg, now);
            }
            let last_ban_len = Duration::from_secs(r.last_ban_s).min(longest);
            self.entries.insert(
                r.id,
                Entry {
                    score,
                    updated: now,
                    banned_until,
                    bans: r.bans,
                    last_ban_end,
                    last_ban_len,
                },
            );
        }
    }
}
