//! What a broadcast message may be, on either transport: not empty, within the size limit, a
//! single line (SSE frames it as one `data:` line), and not JSON `null`, which ends the JS
//! clients' streams.

use axum::http::StatusCode;
use bytes::Bytes;

use super::metrics::Rejection;

/// Checks a broadcast body and frames-to-be: non-empty, within the limit, and free of raw CR or LF,
/// which would end the SSE `data:` line early and let the rest inject frames of its own.
///
/// Invalid UTF-8 becomes U+FFFD, as Node's `Buffer#toString()` makes it in JS signalhub.
pub(crate) fn validate_message(
    body: &Bytes,
    limit: usize,
) -> Result<Bytes, (Rejection, StatusCode, String)> {
    if body.is_empty() {
        return Err((
            Rejection::EmptyBody,
            StatusCode::BAD_REQUEST,
            "empty message body: broadcast a JSON message".to_string(),
        ));
    }
    if body.len() > limit {
        return Err((
            Rejection::BodyTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message body too large: this hub accepts at most {limit} bytes"),
        ));
    }
    if let Some(at) = body.iter().position(|&b| b == b'\n' || b == b'\r') {
        return Err((
            Rejection::BodyHasNewline,
            StatusCode::BAD_REQUEST,
            format!(
                "message body has a raw line break at byte {at}: send single-line JSON (as JSON.stringify writes it)"
            ),
        ));
    }
    if is_json_null(body) {
        return Err((
            Rejection::NullMessage,
            StatusCode::BAD_REQUEST,
            "a null message ends the stream of JS signalhub and signalhubws clients: send an object"
                .to_string(),
        ));
    }
    match std::str::from_utf8(body) {
        Ok(_) => Ok(body.clone()),
        Err(_) => Ok(Bytes::from(String::from_utf8_lossy(body).into_owned())),
    }
}

/// True for the JSON text `null`, with or without white space around it. The JS clients turn a
/// received `null` into the end of their stream (signalhub's line splitter) or an uncaught
/// exception (signalhubws), so one such message would cut every subscriber off.
pub(crate) fn is_json_null(message: &[u8]) -> bool {
    message.trim_ascii() == b"null"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_validation() {
        let ok = Bytes::from_static(br#"{"type":"connect","from":"a"}"#);
        assert_eq!(validate_message(&ok, 100).unwrap(), ok);
        assert!(validate_message(&Bytes::new(), 100).is_err());
        assert!(validate_message(&Bytes::from_static(b"{}\n"), 100).is_err());
        assert!(validate_message(&Bytes::from_static(b"{\r}"), 100).is_err());
        assert!(validate_message(&Bytes::from(vec![b'a'; 101]), 100).is_err());
        assert!(validate_message(&Bytes::from_static(b" null "), 100).is_err());
        assert!(validate_message(&Bytes::from_static(b"\"null\""), 100).is_ok());
        let lossy = validate_message(&Bytes::from_static(b"\"\xff\""), 100).unwrap();
        assert_eq!(&lossy[..], "\"\u{fffd}\"".as_bytes());
    }
}
