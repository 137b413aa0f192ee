//! Forced inner monologue: text a session's model is made to say in its own voice, with no TTS
//! stage. Moshi's text stream leads its audio, so forcing the text tokens is enough for the audio
//! to follow.
//!
//! The model's text stream is a word piece at each word's onset and padding while the word is
//! spoken. Forcing words back to back would outrun the voice, so the pieces are paced by the
//! model itself: the stream is held on padding until the model's own text head would start a
//! piece (its top token is not padding), then that piece is replaced by the next one queued.
//! The first piece waits at most [`MAX_FIRST_WAIT`] frames (a model that is listening speaks
//! when the user stops), the next ones at least [`MIN_GAP`] and at most [`MAX_GAP`] frames after
//! the one before. Once the queue is spent the model is free again.

use std::collections::VecDeque;

/// Frames of padding at least between two forced pieces.
pub const MIN_GAP: usize = 2;
/// Frames of padding at most between two forced pieces.
pub const MAX_GAP: usize = 8;
/// Frames the first piece waits at most for the model to start speaking.
pub const MAX_FIRST_WAIT: usize = 25;
/// Pieces one session may have queued.
pub const MAX_QUEUED: usize = 512;

/// The forced text of one session.
#[derive(Clone, Debug, Default)]
pub struct Monologue {
    queue: VecDeque<i64>,
    /// Frames since the last forced piece (`None`: none forced yet).
    since_piece: Option<usize>,
    /// Frames the first piece has waited.
    waited: usize,
    /// The model's own text head wanted a piece at the last frame.
    wants_piece: bool,
}

impl Monologue {
    /// Queues `pieces` after whatever is queued; refuses (queuing nothing) past [`MAX_QUEUED`].
    pub fn push(&mut self, pieces: &[i64]) -> Result<(), usize> {
        if self.queue.len() + pieces.len() > MAX_QUEUED {
            return Err(MAX_QUEUED - self.queue.len());
        }
        self.queue.extend(pieces);
        Ok(())
    }

    /// Whether pieces are waiting: the session's steps then keep the text logits.
    pub fn active(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Pieces still queued.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The text token to force at this frame (`pad`: hold the stream), or `None` when free.
    pub fn next(&mut self, pad: i64) -> Option<i64> {
        let first = *self.queue.front()?;
        let due = match self.since_piece {
            None => self.waited >= MAX_FIRST_WAIT || self.wants_piece,
            Some(n) => n >= MAX_GAP || (n >= MIN_GAP && self.wants_piece),
        };
        if due {
            self.queue.pop_front();
            self.since_piece = Some(1);
            self.waited = 0;
            Some(first)
        } else {
            match &mut self.since_piece {
                Some(n) => *n += 1,
                None => self.waited += 1,
            }
            Some(pad)
        }
    }

    /// What the model's text head would have picked at the frame just stepped.
    pub fn observe(&mut self, top: i64, pad: i64) {
        self.wants_piece = top != pad && !self.queue.is_empty();
        if self.queue.is_empty() {
            self.since_piece = None;
        }
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: i64 = 3;

    #[test]
    fn pieces_wait_for_the_model_within_bounds() {
        let mut m = Monologue::default();
        m.push(&[10, 11, 12]).unwrap();
        // The first piece waits, holding the stream, until the model would speak.
        for _ in 0..3 {
            assert_eq!(m.next(PAD), Some(PAD));
            m.observe(PAD, PAD);
        }
        m.observe(20, PAD);
        assert_eq!(m.next(PAD), Some(10), "the model's own piece is replaced");
        m.observe(20, PAD);
        // The model wants a piece at once: still padding for MIN_GAP frames.
        assert_eq!(m.next(PAD), Some(PAD));
        m.observe(20, PAD);
        assert_eq!(m.next(PAD), Some(11), "due after MIN_GAP frames with the model asking");
        // The model stays on padding: the next piece comes after MAX_GAP frames.
        let mut frames = 0;
        loop {
            m.observe(PAD, PAD);
            frames += 1;
            if m.next(PAD) == Some(12) {
                break;
            }
            assert!(frames < MAX_GAP, "never forced");
        }
        assert_eq!(frames, MAX_GAP);
        m.observe(PAD, PAD);
        assert_eq!(m.next(PAD), None, "free once the queue is spent");
        assert!(!m.active());
    }

    #[test]
    fn the_first_piece_waits_at_most_max_first_wait() {
        let mut m = Monologue::default();
        m.push(&[10]).unwrap();
        for _ in 0..MAX_FIRST_WAIT {
            assert_eq!(m.next(PAD), Some(PAD));
            m.observe(PAD, PAD);
        }
        assert_eq!(m.next(PAD), Some(10));
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut m = Monologue::default();
        assert_eq!(m.push(&vec![5; MAX_QUEUED + 1]), Err(MAX_QUEUED));
        assert_eq!(m.queued(), 0);
        m.push(&vec![5; MAX_QUEUED]).unwrap();
        assert_eq!(m.push(&[5]), Err(0));
    }
}
