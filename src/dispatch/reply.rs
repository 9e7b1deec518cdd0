//! The reply policy: what every reply of a service goes through on its
//! way out, whichever transport carries it.

/// What every reply of a service goes through on its way out, on either
/// transport: a result larger than the service's message limit becomes an
/// error naming the limit (the client would refuse it anyway), and an
/// error reply is counted in the live counters.
pub(crate) fn outgoing_reply(
    reply: &mut Vec<u8>,
    max: usize,
    counters: Option<&crate::stats::Counters>,
) {
    if reply.len() > max {
        let e = crate::Error::MessageTooLarge {
            len: reply.len() as u64,
            max: max as u64,
        };
        reply.clear();
        crate::envelope::encode_error(reply, "ProtocolError", &format!("the result: {e}"));
    }
    if let Some(c) = counters {
        c.note_reply(reply);
    }
}
