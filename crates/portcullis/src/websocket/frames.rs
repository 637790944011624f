//! WebSocket frame headers, read as the bytes pass (RFC 6455 §5.2): where each frame
//! starts, how long each message is, and the close frames the gateway writes itself.
//! Payloads are never read, unmasked or kept.

/// A message (or a frame) took a message past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Where, in bytes fed at once, the frame that took a message past the limit begins: what
/// came before it (whole messages among it) may still go on, its own bytes may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Over {
    /// How many of the bytes fed came before the offending frame's header (0 when the
    /// header began in bytes fed earlier).
    pub before: usize,
    /// Whether those bytes end on a frame boundary: the header began in these bytes, not
    /// in earlier ones, which went on already.
    pub at_boundary: bool,
}

/// Close codes (RFC 6455 §7.4.1).
pub mod close_code {
    /// The gateway is going away: shutting down, or closing an idle or expired stream.
    pub const GOING_AWAY: u16 = 1001;
    /// The client may no longer use it: its credential was revoked, or it was banned.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message too big to process.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// Follows the frames of one direction of a WebSocket.
#[derive(Debug)]
pub struct Frames {
    /// The header being read, and how many of its bytes have arrived.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Data bytes of the message in progress.
    message: u64,
    /// Most data bytes a message may have.
    limit: u64,
}

impl Frames {
    /// A direction whose messages may carry at most `limit` bytes of payload.
    pub fn new(limit: u64) -> Self {
        Self {
            header: [0; 14],
            have: 0,
            remaining: 0,
            message: 0,
            limit,
        }
    }

    /// Whether the bytes read so far end on a frame boundary, where the gateway may put
    /// a frame of its own.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Follows `bytes`, the next bytes of the direction; fails at the first frame header
    /// that takes its message past the limit, saying where it began.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Over> {
        let mut rest = bytes;
        // Where the header being read began in `bytes`; none when it began earlier.
        let mut header_start = None;
        while !rest.is_empty() {
            if self.remaining > 0 {
                let skipped = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.remaining -= skipped as u64;
                rest = &rest[skipped..];
                continue;
            }
            if self.have == 0 {
                header_start = Some(bytes.len() - rest.len());
            }
            let needed = self.header_len();
            let taken = (needed - self.have).min(rest.len());
            self.header[self.have..self.have + taken].copy_from_slice(&rest[..taken]);
            self.have += taken;
            rest = &rest[taken..];
            // The length is known from the second byte on: take any extension too.
            if self.have == needed && needed == self.header_len() {
                self.frame_read().map_err(|TooLarge| Over {
                    before: header_start.unwrap_or(0),
                    at_boundary: header_start.is_some(),
                })?;
            }
        }
        Ok(())
    }

    /// The header's full length, as far as its bytes so far tell (2 until the second
    /// byte has arrived).
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// A whole header has been read: its payload follows.
    fn frame_read(&mut self) -> Result<(), TooLarge> {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0f;
        let length = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(bytes)
            }
            short => u64::from(short),
        };
        self.have = 0;
        self.remaining = length;
        // Control frames (0x8 and up) may come between a message's frames and are not
        // part of it; continuation (0x0), text (0x1) and binary (0x2) frames are. A control
        // frame carries at most 125 bytes (RFC 6455 §5.5): a longer one is over the limit
        // whatever it is.
        if opcode >= 0x8 && length > 125 {
            return Err(TooLarge);
        }
        if opcode < 0x8 {
            self.message = self.message.saturating_add(length);
            if self.message > self.limit {
                return Err(TooLarge);
            }
            if fin {
                self.message = 0;
            }
        }
        Ok(())
    }
}

/// A close frame with `code`, as a server sends it (unmasked, RFC 6455 §5.1).
pub fn close_to_client(code: u16) -> [u8; 4] {
    let [high, low] = code.to_be_bytes();
    [0x88, 0x02, high, low]
}

/// A close frame with `code`, as a client must send it: masked with `mask`.
pub fn close_to_server(code: u16, mask: [u8; 4]) -> [u8; 8] {
    let [high, low] = code.to_be_bytes();
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        high ^ mask[0],
        low ^ mask[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, masked: bool, length: usize) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match length {
            0..=125 => out.push(mask_bit | length as u8),
            126..=65535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(length as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0x41, length));
        out
    }

    #[test]
    fn frames_of_every_length_form_are_followed_rfc_6455_5_2() {
        for (masked, length) in [(false, 0), (true, 125), (false, 126), (true, 70_000)] {
            let mut frames = Frames::new(1 << 20);
            let bytes = frame(true, 0x2, masked, length);
            frames.feed(&bytes).unwrap();
            assert!(frames.at_boundary(), "{masked} {length}");
        }
    }

    #[test]
    fn bytes_fed_one_at_a_time_are_followed() {
        let mut bytes = frame(false, 0x1, true, 300);
        bytes.extend(frame(true, 0x9, true, 4));
        bytes.extend(frame(true, 0x0, true, 10));
        let mut frames = Frames::new(1 << 20);
        for (at, byte) in bytes.iter().enumerate() {
            frames.feed(std::slice::from_ref(byte)).unwrap();
            assert_eq!(
                frames.at_boundary(),
                at + 1 == bytes.len() || at + 1 == 308 || at + 1 == 318,
                "{at}"
            );
        }
    }

    /// What `feed` says of an offending frame at the start of the bytes fed.
    const FIRST: Over = Over {
        before: 0,
        at_boundary: true,
    };

    /// Whole messages before the offending frame, in the same bytes, may still go on; the
    /// bytes of a header begun in earlier ones went on already.
    #[test]
    fn an_offending_frame_is_placed_after_what_came_before_it() {
        let small = frame(true, 0x1, true, 11);
        let mut bytes = small.clone();
        bytes.extend(frame(true, 0x2, true, 20_000));
        let mut frames = Frames::new(10_000);
        let over = Over {
            before: small.len(),
            at_boundary: true,
        };
        assert_eq!(frames.feed(&bytes), Err(over));
        let mut frames = Frames::new(10_000);
        frames.feed(&bytes[..small.len() + 1]).unwrap();
        let over = Over {
            before: 0,
            at_boundary: false,
        };
        assert_eq!(frames.feed(&bytes[small.len() + 1..]), Err(over));
    }

    #[test]
    fn a_message_over_the_limit_across_fragments_is_too_large() {
        let mut frames = Frames::new(100);
        frames.feed(&frame(false, 0x2, false, 60)).unwrap();
        // A ping between fragments does not count.
        frames.feed(&frame(true, 0x9, false, 50)).unwrap();
        assert_eq!(frames.feed(&frame(true, 0x0, false, 60)), Err(FIRST));
    }

    #[test]
    fn each_message_starts_its_count_afresh() {
        let mut frames = Frames::new(100);
        for _ in 0..5 {
            frames.feed(&frame(true, 0x1, true, 90)).unwrap();
        }
        assert_eq!(frames.feed(&frame(true, 0x1, true, 101)), Err(FIRST));
    }

    #[test]
    fn a_declared_length_is_refused_before_its_payload_arrives() {
        let mut frames = Frames::new(1 << 20);
        let header = &frame(true, 0x2, false, 2 << 20)[..10];
        assert_eq!(frames.feed(header), Err(FIRST));
    }

    #[test]
    fn a_control_frame_over_125_bytes_is_too_large_rfc_6455_5_5() {
        let mut frames = Frames::new(1 << 20);
        frames.feed(&frame(true, 0x9, true, 125)).unwrap();
        assert_eq!(frames.feed(&frame(true, 0x9, true, 126)[..8]), Err(FIRST));
        let mut frames = Frames::new(1 << 20);
        // A ping declaring a length with the top bit set.
        let mut huge = vec![0x89, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(frames.feed(&huge), Err(FIRST));
    }

    #[test]
    fn close_frames_carry_their_code_and_the_client_one_is_masked() {
        assert_eq!(close_to_client(1001), [0x88, 0x02, 0x03, 0xe9]);
        let masked = close_to_server(1009, [9, 8, 7, 6]);
        assert_eq!(masked[1], 0x82, "mask bit and length 2");
        assert_eq!([masked[6] ^ 9, masked[7] ^ 8], 1009u16.to_be_bytes());
    }
}
