//! Whose fault an error is, and the reputation table: every kind of peer
//! misbehaviour with its weight, ban class and whether it ends the
//! connection, in one place (reth's `network-types/src/peers/reputation.rs`
//! is the model; the ban classes are Chia's).
//!
//! Reactors and the switch report a [`Misbehavior`], never a number; the
//! [`PeerManager`](crate::switch::PeerManager) adds its weight to the
//! peer's score (kept per NodeId, decaying) and bans the identity when the
//! score reaches `ban_threshold` (100 by default).
//!
//! | kind | weight | class | disconnects |
//! |---|---|---|---|
//! | `BadBlock` | 100 | consensus | yes |
//! | `BadPow` | 100 | consensus | yes |
//! | `WeightLie` | 100 | consensus | yes |
//! | `WithheldData` | 100 | consensus | yes |
//! | `UnbackedClaim` | 25 | consensus | no |
//! | `InvalidTransaction` | 20 | consensus | no |
//! | `MalformedMessage` | 50 | protocol | yes |
//! | `OversizedMessage` | 50 | protocol | yes |
//! | `UndeclaredChannel` | 50 | protocol | yes |
//! | `MalformedPacket` | 50 | protocol | yes |
//! | `MalformedFrame` | 50 | protocol | yes |
//! | `FlowControlViolation` | 50 | protocol | yes |
//! | `BadAddresses` | 50 | protocol | yes |
//! | `UnsolicitedMessage` | 20 | protocol | yes |
//! | `Flood` | 50 | rate limit | yes |
//! | `UnreadAnswers` | 50 | rate limit | yes |
//!
//! Ban classes set the first ban of an identity: protocol 10 s, rate limit
//! 300 s, consensus 600 s (Chia's tiers); each later ban within the repeat
//! window doubles it, up to `ban_max` (see
//! [`PeerManagerConfig`](crate::switch::PeerManagerConfig)).
//!
//! Timeouts and slowness are not misbehaviour: they lower a peer's
//! preference in the reactor that measured them, never its reputation.

/// Whose fault an error is. Every public error enum of the crate maps each
/// of its variants to one (rustls's split between peer misbehaviour, local
/// errors and I/O is the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The remote peer broke the protocol: scored by the
    /// [`PeerManager`](crate::switch::PeerManager).
    Peer,
    /// Both sides behave, but do not fit (network, versions, channels):
    /// refused, not scored.
    Incompatible,
    /// The network or the operating system: I/O errors, timeouts, EOF. Not
    /// scored.
    Io,
    /// Us: our configuration, our limits, a local decision (stopped,
    /// banned, full). Not scored.
    Local,
}

/// What a peer did wrong: one entry of the reputation table (the module
/// docs list every weight). Named for what happened, not for its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Misbehavior {
    /// A block that fails validation (bad merkle root, transactions,
    /// size, timestamps, difficulty bits).
    BadBlock,
    /// A block or header whose hash does not meet its target.
    BadPow,
    /// Headers that do not add up to the chain weight the peer claimed.
    WeightLie,
    /// Refused data it had claimed to hold (`NoBlockResponse` for a block
    /// on the chain it announced, an empty headers answer to a heavier
    /// claim).
    WithheldData,
    /// A status claiming more work than the peer then delivers when
    /// asked: weaker evidence than a [`Misbehavior::WeightLie`], so it
    /// takes four to ban and does not disconnect.
    UnbackedClaim,
    /// A transaction that fails the mempool's checks.
    InvalidTransaction,
    /// A message that does not decode, or a field that breaks the
    /// message's rules (a hash of the wrong length, a missing part).
    MalformedMessage,
    /// A message larger than its channel's receive limit, or a packet
    /// larger than the largest packet.
    OversizedMessage,
    /// A message on a channel that was not declared for this connection.
    UndeclaredChannel,
    /// A packet that is not valid protobuf or carries nothing.
    MalformedPacket,
    /// After the handshake, a frame that fails to decrypt or has an
    /// impossible length.
    MalformedFrame,
    /// More bytes than the credit we granted on a channel, or an
    /// acknowledgement of bytes never sent.
    FlowControlViolation,
    /// Too many or malformed addresses in one PEX answer.
    BadAddresses,
    /// An answer nobody asked for.
    UnsolicitedMessage,
    /// Requests faster than the protocol allows (PEX requests under half
    /// the minimum interval).
    Flood,
    /// Asks for data and does not read the answers: our send budget to it
    /// stayed full for `send_timeout` while answering its request.
    UnreadAnswers,
}

/// Which first ban a misbehaviour earns when it tips the score over the
/// threshold (Chia's tiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanClass {
    /// Protocol errors: first ban `ban_protocol_error` (10 s).
    Protocol,
    /// Rate limits: first ban `ban_rate_limit` (300 s).
    RateLimit,
    /// Consensus errors (invalid or withheld chain data): first ban
    /// `ban_consensus_error` (600 s).
    Consensus,
}

impl Misbehavior {
    /// Every kind, in table order.
    pub const ALL: [Misbehavior; 16] = [
        Misbehavior::BadBlock,
        Misbehavior::BadPow,
        Misbehavior::WeightLie,
        Misbehavior::WithheldData,
        Misbehavior::UnbackedClaim,
        Misbehavior::InvalidTransaction,
        Misbehavior::MalformedMessage,
        Misbehavior::OversizedMessage,
        Misbehavior::UndeclaredChannel,
        Misbehavior::MalformedPacket,
        Misbehavior::MalformedFrame,
        Misbehavior::FlowControlViolation,
        Misbehavior::BadAddresses,
        Misbehavior::UnsolicitedMessage,
        Misbehavior::Flood,
        Misbehavior::UnreadAnswers,
    ];

    /// The row of the table: (weight, ban class, disconnects).
    const fn row(self) -> (u32, BanClass, bool) {
        use BanClass::*;
        match self {
            Misbehavior::BadBlock => (100, Consensus, true),
            Misbehavior::BadPow => (100, Consensus, true),
            Misbehavior::WeightLie => (100, Consensus, true),
            Misbehavior::WithheldData => (100, Consensus, true),
            Misbehavior::UnbackedClaim => (25, Consensus, false),
            Misbehavior::InvalidTransaction => (20, Consensus, false),
            Misbehavior::MalformedMessage => (50, Protocol, true),
            Misbehavior::OversizedMessage => (50, Protocol, true),
            Misbehavior::UndeclaredChannel => (50, Protocol, true),
            Misbehavior::MalformedPacket => (50, Protocol, true),
            Misbehavior::MalformedFrame => (50, Protocol, true),
            Misbehavior::FlowControlViolation => (50, Protocol, true),
            Misbehavior::BadAddresses => (50, Protocol, true),
            Misbehavior::UnsolicitedMessage => (20, Protocol, true),
            Misbehavior::Flood => (50, RateLimit, true),
            Misbehavior::UnreadAnswers => (50, RateLimit, true),
        }
    }

    /// Points added to the peer's score (the ban threshold defaults to
    /// 100, so a weight of 100 bans at once and 50 on the second offence).
    pub const fn weight(self) -> u32 {
        self.row().0
    }

    /// The ban class, which sets the first ban's length.
    pub const fn class(self) -> BanClass {
        self.row().1
    }

    /// Whether the connection is closed even below the ban threshold.
    pub const fn disconnects(self) -> bool {
        self.row().2
    }

    /// A short snake_case label for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Misbehavior::BadBlock => "bad_block",
            Misbehavior::BadPow => "bad_pow",
            Misbehavior::WeightLie => "weight_lie",
            Misbehavior::WithheldData => "withheld_data",
            Misbehavior::UnbackedClaim => "unbacked_claim",
            Misbehavior::InvalidTransaction => "invalid_transaction",
            Misbehavior::MalformedMessage => "malformed_message",
            Misbehavior::OversizedMessage => "oversized_message",
            Misbehavior::UndeclaredChannel => "undeclared_channel",
            Misbehavior::MalformedPacket => "malformed_packet",
            Misbehavior::MalformedFrame => "malformed_frame",
            Misbehavior::FlowControlViolation => "flow_control_violation",
            Misbehavior::BadAddresses => "bad_addresses",
            Misbehavior::UnsolicitedMessage => "unsolicited_message",
            Misbehavior::Flood => "flood",
            Misbehavior::UnreadAnswers => "unread_answers",
        }
    }
}

impl std::fmt::Display for Misbehavior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_weights_positive() {
        let mut seen = std::collections::HashSet::new();
        for m in Misbehavior::ALL {
            assert!(seen.insert(m.label()), "{m:?}");
            assert!(m.weight() > 0 && m.weight() <= 100, "{m:?}");
        }
        // Wire violations ban on the second offence at the default
        // threshold; proven lies at the first.
        assert_eq!(Misbehavior::UndeclaredChannel.weight() * 2, 100);
        assert_eq!(Misbehavior::BadBlock.weight(), 100);
    }
}
