//! The invalidation bus: Redis pub/sub messages that carry no value, only what to invalidate,
//! so every instance drops (or marks stale) its in-memory copies within the bus's delivery time.
//!
//! A message: `u8` format (1), `u64` sender, `u8` kind, then the kind's payload:
//! 1 = remove, 2 = mark stale (the key's bytes), 3 = a scope (`u8` soft, `u64` purge time in
//! Redis milliseconds, the scope's bytes), 4 = clear (`u64` the new generation).

/// One invalidation as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Remove(Vec<u8>),
    MarkStale(Vec<u8>),
    Scope { soft: bool, at: u64, scope: Vec<u8> },
    Clear { generation: u64 },
}

const FORMAT: u8 = 1;

impl Message {
    pub(crate) fn encode(&self, sender: u64) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&sender.to_be_bytes());
        match self {
            Message::Remove(key) => {
                out.push(1);
                out.extend_from_slice(key);
            }
            Message::MarkStale(key) => {
                out.push(2);
                out.extend_from_slice(key);
            }
            Message::Scope { soft, at, scope } => {
                out.push(3);
                out.push(u8::from(*soft));
                out.extend_from_slice(&at.to_be_bytes());
                out.extend_from_slice(scope);
            }
            Message::Clear { generation } => {
                out.push(4);
                out.extend_from_slice(&generation.to_be_bytes());
            }
        }
        out
    }

    /// The sender and the message; `None` for bytes that are not a message of this format.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(u64, Message)> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT || rest.len() < 9 {
            return None;
        }
        let sender = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let (&kind, payload) = rest[8..].split_first()?;
        let u64_at = |bytes: &[u8]| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
        };
        let message = match kind {
            1 => Message::Remove(payload.to_vec()),
            2 => Message::MarkStale(payload.to_vec()),
            3 => {
                let (&soft, rest) = payload.split_first()?;
                if soft > 1 {
                    return None;
                }
                Message::Scope {
                    soft: soft == 1,
                    at: u64_at(rest)?,
                    scope: rest.get(8..)?.to_vec(),
                }
            }
            4 if payload.len() == 8 => Message::Clear {
                generation: u64_at(payload)?,
            },
            _ => return None,
        };
        Some((sender, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_comes_back_as_it_was_sent() {
        let messages = [
            Message::Remove(b"key".to_vec()),
            Message::MarkStale(Vec::new()),
            Message::Scope {
                soft: true,
                at: 17,
                scope: b"P/items".to_vec(),
            },
            Message::Clear {
                generation: u64::MAX,
            },
        ];
        for message in messages {
            assert_eq!(Message::decode(&message.encode(42)), Some((42, message)));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(&bytes);
        }
    }
}
