//! Lines out of a task's output as it grows: [`LineSplitter`] turns appended
//! bytes into complete lines, keeping a partial last line until its newline
//! arrives (or the output ends), and [`Batcher`] gathers them into the
//! batches a follow sends, keeping only the last `tail` lines of the output
//! that existed when the follow began.
//!
//! Both are pure (no I/O), shared by the process runtime (bytes appended to
//! a file) and the docker runtime (frames of the engine's log stream).

use std::collections::VecDeque;

/// The longest line kept whole: a longer one is cut into pieces of this
/// size, as docker's log drivers cut lines at 16 KiB. It bounds what a
/// splitter holds while a task writes without a newline.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines per batch (and per log chunk sent up the session).
pub const BATCH_LINES: usize = 500;

/// Splits a byte stream into lines.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max_line: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter that cuts lines longer than `max_line` bytes (at least 1).
    #[must_use]
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// The complete lines `bytes` ends (without their `\n` or `\r\n`; invalid
    /// UTF-8 replaced), in order; a partial last line is kept for the next
    /// call. A partial line that reaches the maximum length is returned as a
    /// line of its own.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = self.max_line - self.partial.len();
            let window = &rest[..rest.len().min(room)];
            if let Some(pos) = window.iter().position(|b| *b == b'\n') {
                self.partial.extend_from_slice(&window[..pos]);
                lines.push(self.take());
                rest = &rest[pos + 1..];
            } else {
                self.partial.extend_from_slice(window);
                rest = &rest[window.len()..];
                if self.partial.len() >= self.max_line {
                    lines.push(self.take());
                }
            }
        }
        lines
    }

    /// The partial last line, once the output is complete (`None` if the
    /// output ended with a newline).
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

/// Gathers a follow's lines into batches of at most [`BATCH_LINES`]. Until
/// [`Batcher::caught_up`] (the output that existed when the follow began
/// has been read), only the last `tail` lines are kept (all with `tail` 0);
/// after it, every line is passed on.
#[derive(Debug)]
pub struct Batcher {
    tail: usize,
    backlog: VecDeque<String>,
    live: bool,
}

impl Batcher {
    /// A batcher for a follow that starts with the last `tail` lines (0: all).
    #[must_use]
    pub fn new(tail: usize) -> Self {
        Self {
            tail,
            backlog: VecDeque::new(),
            live: false,
        }
    }

    /// Takes `lines`; returns the batches to send now.
    pub fn push(&mut self, lines: Vec<String>) -> Vec<Vec<String>> {
        if self.live || self.tail == 0 {
            self.backlog.extend(lines);
            // Without a tail the backlog never holds more than a batch.
            return self.drain(!self.live);
        }
        for line in lines {
            if self.backlog.len() == self.tail {
                self.backlog.pop_front();
            }
            self.backlog.push_back(line);
        }
        Vec::new()
    }

    /// The existing output has been read: returns what it kept, from now on
    /// lines pass straight through.
    pub fn caught_up(&mut self) -> Vec<Vec<String>> {
        self.live = true;
        self.drain(false)
    }

    /// Full batches, and with `!only_full` the last partial one too.
    fn drain(&mut self, only_full: bool) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while self.backlog.len() >= BATCH_LINES || (!only_full && !self.backlog.is_empty()) {
            let n = self.backlog.len().min(BATCH_LINES);
            out.push(self.backlog.drain(..n).collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"tick 1\ntick"), ["tick 1"]);
        assert!(s.push(b" 2").is_empty(), "no newline yet");
        assert_eq!(s.push(b"\ntick 3\r\n\n"), ["tick 2", "tick 3", ""]);
        assert_eq!(s.finish(), None);
        assert!(s.push(b"last").is_empty());
        assert_eq!(s.finish().as_deref(), Some("last"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_line_split_across_pushes_byte_by_byte_comes_out_whole() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        for b in "héllo\nwörld\n".as_bytes() {
            lines.extend(s.push(std::slice::from_ref(b)));
        }
        assert_eq!(lines, ["héllo", "wörld"], "a UTF-8 character cut in two");
    }

    #[test]
    fn a_line_without_newline_is_cut_at_the_maximum() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"abcdefghij"), ["abcd", "efgh"]);
        assert_eq!(s.push(b"k\nxy"), ["ijk"]);
        assert_eq!(s.finish().as_deref(), Some("xy"));
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"abc"), Vec::<String>::new());
        assert_eq!(
            s.push(b"d\n"),
            ["abcd", ""],
            "the cut falls just before a newline"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }

    fn lines(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn a_tail_keeps_the_last_lines_of_the_existing_output_then_passes_everything() {
        let mut b = Batcher::new(2);
        assert!(b.push(lines(0..3)).is_empty());
        assert!(b.push(lines(3..5)).is_empty());
        assert_eq!(b.caught_up(), [lines(3..5)]);
        assert_eq!(b.push(lines(5..6)), [lines(5..6)]);
        assert!(b.push(Vec::new()).is_empty());
        assert!(b.caught_up().is_empty());
    }

    #[test]
    fn without_a_tail_batches_are_bounded_and_sent_as_they_fill() {
        let mut b = Batcher::new(0);
        let batches = b.push(lines(0..BATCH_LINES + 10));
        assert_eq!(
            batches,
            [lines(0..BATCH_LINES)],
            "a full batch goes at once"
        );
        assert_eq!(b.caught_up(), [lines(BATCH_LINES..BATCH_LINES + 10)]);
        let batches = b.push(lines(0..2 * BATCH_LINES + 1));
        assert_eq!(batches.len(), 3);
        assert!(batches.iter().all(|b| b.len() <= BATCH_LINES));
    }
}
