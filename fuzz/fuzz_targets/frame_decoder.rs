//! The hyperlog frame decoder (`swarm::FrameDecoder`) fed the input in chunks, with a small frame
//! limit chosen by the input: it must never panic; the messages and the error it yields must not
//! depend on how the stream was split; every message decoded must encode to a frame that decodes
//! to the same message; a Node message either becomes a `Node` or is refused, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarm::{FrameDecoder, Message, Node, WireError};

fn run<'a>(
    max_frame: usize,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Message>, Option<WireError>) {
    let mut decoder = FrameDecoder::with_max_frame_size(max_frame);
    let mut messages = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => {
                    // The decoder stays failed.
                    assert_eq!(decoder.next_message(), Err(err.clone()));
                    return (messages, Some(err));
                }
            }
        }
        assert!(decoder.buffered() <= chunk.len() + max_frame + 10);
    }
    (messages, None)
}

fuzz_target!(|input: &[u8]| {
    let [limit, chunk, data @ ..] = input else {
        return;
    };
    let max_frame = usize::from(*limit) * 16 + 1;
    let chunk = usize::from(*chunk % 32) + 1;
    let whole = run(max_frame, std::iter::once(data));
    let split = run(max_frame, data.chunks(chunk));
    assert_eq!(whole, split, "chunks of {chunk} bytes decode differently");
    for message in whole.0 {
        let frame = message.to_frame();
        assert_eq!(frame.len(), message.frame_len());
        let mut again = FrameDecoder::with_max_frame_size(usize::MAX);
        again.push(&frame);
        assert_eq!(again.next_message(), Ok(Some(message.clone())));
        assert!(again.is_at_boundary());
        if let Message::Node(node) = message {
            if let Ok(node) = Node::from_message(node) {
                let _ = node.check_key();
                let message = node.to_message();
                let (mut direct, mut built) = (Vec::new(), Vec::new());
                node.encode_message(&mut direct);
                message.encode(&mut built);
                assert_eq!(
                    direct, built,
                    "Node::encode_message differs from its message"
                );
                let back = Node::from_message(message).expect("a node's own message");
                assert_eq!(back, node);
            }
        }
    }
});
