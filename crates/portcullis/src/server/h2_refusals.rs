//! The HTTP/2 requests h2 refuses before the service sees them, spotted in the frames that
//! pass, so that each still gets its record.
//!
//! h2 resets a stream whose head is malformed (RFC 9113 §8.1.1: a connection-specific
//! field, an invalid pseudo-header, an END_STREAM head declaring a body...) with
//! RST_STREAM PROTOCOL_ERROR, and answers a head over the header list limit with a bare 431
//! (RFC 9113 §6.5.2; RFC 6585 §5), without calling the service.
//! Neither hyper nor h2 says so to the caller, so [`RefusalWatchIo`] reads the frame headers
//! going each way (never a payload, except the four bytes of a RST_STREAM's error code):
//! a stream the client opened and sent nothing more on, answered by such a reset, was
//! refused before the service saw it. A stream the service answered, or the client sent
//! more on (a body, trailers), is the service's to record, so it is never counted twice;
//! the price is that a malformed head whose body arrived in the same read goes unrecorded.
//! The gateway's own answers always carry `x-request-id` marked never-indexed, so they are
//! never as small as h2's bare 431.

use std::collections::HashSet;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::exchange::Decision;

/// What is done with each refusal spotted: the status h2 answered (none when it only reset
/// the stream) and the decision the record keeps.
pub type OnRefusal = Box<dyn Fn(Option<StatusCode>, Decision) + Send>;

/// A connection's IO, watched for the streams h2 refuses on its own.
pub struct RefusalWatchIo<I> {
    inner: I,
    from_client: FrameHeaders,
    to_client: FrameHeaders,
    streams: OpenedStreams,
    on_refusal: OnRefusal,
}

impl<I> RefusalWatchIo<I> {
    /// Watches `inner`, a server connection that has not read the client preface yet.
    pub fn new(inner: I, on_refusal: OnRefusal) -> Self {
        Self {
            inner,
            from_client: FrameHeaders::after(PREFACE.len()),
            to_client: FrameHeaders::after(0),
            streams: OpenedStreams::default(),
            on_refusal,
        }
    }
}

/// The client connection preface (RFC 9113 §3.4), which precedes the client's frames.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
/// The END_STREAM flag of DATA and HEADERS.
const END_STREAM: u8 = 0x1;
/// Error codes (RFC 9113 §7).
const PROTOCOL_ERROR: u32 = 0x1;

/// A frame's header, as read: with the error code, for a RST_STREAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    /// The payload's length.
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
    /// A RST_STREAM's error code.
    code: Option<u32>,
}

/// Finds the frame headers in a stream of HTTP/2 bytes fed in pieces of any size.
#[derive(Debug)]
struct FrameHeaders {
    /// Bytes still to skip before the first frame (the client preface).
    skip: usize,
    /// The frame header being read.
    header: [u8; 9],
    header_len: usize,
    /// The payload bytes left of the current frame.
    payload_left: usize,
    /// A RST_STREAM's error code, being read.
    code: [u8; 4],
    code_len: usize,
    /// The RST_STREAM being read, until its error code is.
    reset: Option<Frame>,
}

impl FrameHeaders {
    fn after(skip: usize) -> Self {
        Self {
            skip,
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            code: [0; 4],
            code_len: 0,
            reset: None,
        }
    }

    /// Reads `bytes`, calling `seen` with each frame header completed in them.
    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if let Some(reset) = &mut self.reset {
                    let take = (4 - self.code_len).min(n);
                    self.code[self.code_len..self.code_len + take].copy_from_slice(&bytes[..take]);
                    self.code_len += take;
                    if self.code_len == 4 {
                        reset.code = Some(u32::from_be_bytes(self.code));
                        seen(*reset);
                        self.reset = None;
                    }
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    self.frame_read(&mut seen);
                }
            }
        }
    }

    fn frame_read(&mut self, seen: &mut impl FnMut(Frame)) {
        let h = self.header;
        let length = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let frame = Frame {
            length,
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            code: None,
        };
        self.payload_left = length;
        // A RST_STREAM's payload is its 4-byte error code (RFC 9113 §6.4); a shorter one
        // is a connection error, and tells nothing.
        if frame.kind == RST_STREAM && length >= 4 {
            self.reset = Some(frame);
            self.code_len = 0;
        } else {
            self.reset = None;
            seen(frame);
        }
    }
}

/// The streams the client opened and has sent nothing more on, which the service has not
/// answered: those h2 may yet refuse on its own.
#[derive(Debug, Default)]
struct OpenedStreams {
    waiting: HashSet<u32>,
    /// The highest stream the client opened.
    newest: u32,
}

/// How many streams back an unanswered one is forgotten: h2 refuses a stream as soon as it
/// reads its head, long before the client has opened this many others.
const FORGET_AFTER: u32 = 2 * 1024;

/// The largest header block of h2's own 431: `:status` alone, a few bytes of HPACK. The
/// gateway's answers always carry more (`x-request-id` at least).
const OWN_ANSWER_MAX: usize = 8;

impl OpenedStreams {
    fn received(&mut self, frame: Frame) {
        if frame.stream == 0 || frame.kind == CONTINUATION {
            return;
        }
        if frame.kind == HEADERS && frame.stream > self.newest {
            self.newest = frame.stream;
            if self.waiting.len() >= 2 * FORGET_AFTER as usize {
                let oldest = self.newest.saturating_sub(FORGET_AFTER);
                self.waiting.retain(|stream| *stream > oldest);
            }
            self.waiting.insert(frame.stream);
        } else {
            // A body, trailers, a reset: the stream reached the service, or is over.
            self.waiting.remove(&frame.stream);
        }
    }

    /// The refusal `frame`, sent to the client, makes, if any.
    fn sent(&mut self, frame: Frame) -> Option<(Option<StatusCode>, Decision)> {
        if !matches!(frame.kind, HEADERS | DATA | RST_STREAM) || !self.waiting.remove(&frame.stream)
        {
            return None;
        }
        match frame.kind {
            HEADERS if frame.flags & END_STREAM != 0 && frame.length <= OWN_ANSWER_MAX => Some((
                Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                Decision::HeadersTooLarge,
            )),
            RST_STREAM if frame.code == Some(PROTOCOL_ERROR) => Some((None, Decision::BadRequest)),
            // The service answered, or the stream ended otherwise.
            _ => None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for RefusalWatchIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let streams = &mut this.streams;
        this.from_client
            .feed(&buf.filled()[before..], |frame| streams.received(frame));
        polled
    }
}

impl<I: AsyncWrite + Unpin> RefusalWatchIo<I> {
    /// Reads the first `written` bytes of `bufs`, sent to the client.
    fn watch_sent<'b>(&mut self, bufs: impl Iterator<Item = &'b [u8]>, mut written: usize) {
        let Self {
            to_client,
            streams,
            on_refusal,
            ..
        } = self;
        for buf in bufs {
            if written == 0 {
                break;
            }
            let part = &buf[..written.min(buf.len())];
            written -= part.len();
            to_client.feed(part, |frame| {
                if let Some((status, decision)) = streams.sent(frame) {
                    on_refusal(status, decision);
                }
            });
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for RefusalWatchIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            this.watch_sent(std::iter::once(buf), written);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            this.watch_sent(bufs.iter().map(|buf| &**buf), written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` one byte at a time and whole; both must find the same frames.
    fn frames_in(skip: usize, bytes: &[u8]) -> Vec<Frame> {
        let mut whole = Vec::new();
        FrameHeaders::after(skip).feed(bytes, |f| whole.push(f));
        let mut split = Vec::new();
        let mut reader = FrameHeaders::after(skip);
        for byte in bytes {
            reader.feed(std::slice::from_ref(byte), |f| split.push(f));
        }
        assert_eq!(whole, split);
        whole
    }

    #[test]
    fn frame_headers_are_found_however_the_bytes_are_cut() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        bytes.extend(frame(HEADERS, 0x5, 1, b"\x82\x84\x87"));
        bytes.extend(frame(RST_STREAM, 0, 3, &PROTOCOL_ERROR.to_be_bytes()));
        bytes.extend(frame(DATA, END_STREAM, 5, &[7; 100]));
        let frames = frames_in(PREFACE.len(), &bytes);
        let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.stream, f.code)).collect();
        assert_eq!(
            kinds,
            [
                (0x4, 0, None),
                (HEADERS, 1, None),
                (RST_STREAM, 3, Some(PROTOCOL_ERROR)),
                (DATA, 5, None)
            ]
        );
        assert_eq!(frames[1].flags, 0x5);
    }

    fn header(kind: u8, flags: u8, stream: u32, code: Option<u32>) -> Frame {
        Frame {
            length: 100,
            kind,
            flags,
            stream,
            code,
        }
    }

    #[test]
    fn only_streams_refused_before_the_service_are_counted() {
        let mut streams = OpenedStreams::default();
        // Stream 1: malformed head, reset at once (RFC 9113 §8.1.1).
        streams.received(header(HEADERS, END_STREAM, 1, None));
        let reset = header(RST_STREAM, 0, 1, Some(PROTOCOL_ERROR));
        assert_eq!(streams.sent(reset), Some((None, Decision::BadRequest)));
        assert_eq!(streams.sent(reset), None, "counted once");
        // Stream 3: a body came, then a reset: the service saw it.
        streams.received(header(HEADERS, 0, 3, None));
        streams.received(header(DATA, 0, 3, None));
        assert_eq!(
            streams.sent(header(RST_STREAM, 0, 3, Some(PROTOCOL_ERROR))),
            None
        );
        // Stream 5: too large a head, answered with h2's bare 431.
        streams.received(header(HEADERS, END_STREAM, 5, None));
        let bare = Frame {
            length: 4,
            ..header(HEADERS, END_STREAM, 5, None)
        };
        assert_eq!(
            streams.sent(bare),
            Some((
                Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                Decision::HeadersTooLarge
            ))
        );
        // Stream 7: the service answered, even with no body; a later reset is not a
        // refusal.
        streams.received(header(HEADERS, END_STREAM, 7, None));
        assert_eq!(streams.sent(header(HEADERS, END_STREAM, 7, None)), None);
        assert_eq!(
            streams.sent(header(RST_STREAM, 0, 7, Some(PROTOCOL_ERROR))),
            None
        );
        assert!(streams.waiting.is_empty());
    }

    #[test]
    fn streams_never_answered_are_forgotten() {
        let mut streams = OpenedStreams::default();
        for stream in (1..20_000).step_by(2) {
            streams.received(header(HEADERS, END_STREAM, stream, None));
        }
        assert!(streams.waiting.len() <= 2 * FORGET_AFTER as usize);
    }
}
