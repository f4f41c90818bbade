use super::*;

fn sample() -> Message {
    let mut properties = BTreeMap::new();
    properties.insert("b".to_string(), "2".to_string());
    properties.insert("a".to_string(), "1".to_string());
    Message {
        topic: "T".into(),
        queue_id: 3,
        tags: "TagA".into(),
        keys: vec!["k1".into(), "k2".into()],
        properties,
        flag: 9,
        sys_flag: 0,
        reconsume_times: 1,
        born_timestamp_ms: 10,
        store_timestamp_ms: 20,
        born_host: "127.0.0.1:1".into(),
        msg_id: "ID".into(),
        body: b"body".to_vec(),
    }
}

#[test]
fn golden_bytes() {
    let mut out = Vec::new();
    sample().encode_into(&mut out).unwrap();
    let mut expected: Vec<u8> = Vec::new();
    expected.extend_from_slice(&(out.len() as u32).to_le_bytes());
    expected.extend_from_slice(&[0; 4]); // crc, checked below
    expected.extend_from_slice(&[1, 0, 0, 0]);
    for v in [3u32, 9, 0, 1] {
        expected.extend_from_slice(&v.to_le_bytes());
    }
    expected.extend_from_slice(&10u64.to_le_bytes());
    expected.extend_from_slice(&20u64.to_le_bytes());
    for s in ["T", "ID", "127.0.0.1:1", "TagA"] {
        expected.extend_from_slice(&(s.len() as u16).to_le_bytes());
        expected.extend_from_slice(s.as_bytes());
    }
    expected.extend_from_slice(&2u16.to_le_bytes());
    for s in ["k1", "k2"] {
        expected.extend_from_slice(&2u16.to_le_bytes());
        expected.extend_from_slice(s.as_bytes());
    }
    expected.extend_from_slice(&12u32.to_le_bytes()); // properties sorted: a=1, b=2
    for s in ["a", "1", "b", "2"] {
        expected.extend_from_slice(&1u16.to_le_bytes());
        expected.extend_from_slice(s.as_bytes());
    }
    expected.extend_from_slice(&4u32.to_le_bytes());
    expected.extend_from_slice(b"body");
    let crc = crc32c::crc32c(&out[8..]);
    expected[4..8].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(out, expected);
    assert_eq!(out.len(), sample().encoded_len());
    assert_eq!(Message::decode(&out).unwrap(), sample());
}

#[test]
fn batch_round_trip_and_spans() {
    let mut second = sample();
    second.body = vec![5; 1000];
    let payload = encode_batch(&[sample(), second.clone()]).unwrap();
    let spans = split_batch(&payload).unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].offset, 4);
    assert_eq!(decode_batch(&payload).unwrap(), vec![sample(), second]);
}

#[test]
fn limits_are_enforced_before_encoding() {
    let mut m = sample();
    m.body = vec![0; BODY_MAX + 1];
    assert!(matches!(
        m.encode_into(&mut Vec::new()),
        Err(StoreError::InvalidArgument(_))
    ));
    let mut m = sample();
    m.topic = "x".repeat(TOPIC_MAX + 1);
    assert!(m.validate().is_err());
    let mut m = sample();
    m.keys = vec!["k".into(); KEYS_MAX + 1];
    assert!(m.validate().is_err());
    assert!(encode_batch(&[]).is_err());
}

#[test]
fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
    let mut out = Vec::new();
    sample().encode_into(&mut out).unwrap();
    for cut in 0..out.len() {
        assert!(Message::decode(&out[..cut]).is_err(), "cut at {cut}");
    }
    for byte in 0..out.len() {
        let mut b = out.clone();
        b[byte] ^= 0x10;
        assert!(Message::decode(&b).is_err(), "flip at {byte}");
    }
    let payload = encode_batch(&[sample()]).unwrap();
    for cut in 0..payload.len() {
        assert!(split_batch(&payload[..cut]).is_err(), "batch cut at {cut}");
    }
    // A huge count or length must not allocate.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(split_batch(&huge).is_err());
}

#[test]
fn tag_hash_is_stable() {
    assert_eq!(tag_hash(""), 0);
    assert_eq!(
        tag_hash("TagA"),
        u64::from(crc32c::crc32c(b"TagA")) | 1 << 32
    );
    assert_ne!(tag_hash("TagA"), tag_hash("TagB"));
}

mod props {
    use proptest::prelude::*;

    use super::super::*;

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            "[A-Za-z0-9_%|-]{1,20}",
            any::<u32>(),
            "[a-zA-Z]{0,8}",
            proptest::collection::vec("[a-z0-9]{1,8}", 0..4),
            proptest::collection::btree_map("[a-z]{1,6}", "[ -~]{0,10}", 0..4),
            any::<(u32, u32, u32, u64, u64)>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(
                    topic,
                    queue_id,
                    tags,
                    keys,
                    properties,
                    (flag, sys_flag, rt, born, store),
                    body,
                )| Message {
                    topic,
                    queue_id,
                    tags,
                    keys,
                    properties,
                    flag,
                    sys_flag,
                    reconsume_times: rt,
                    born_timestamp_ms: born,
                    store_timestamp_ms: store,
                    born_host: "10.0.0.1:9".into(),
                    msg_id: "abc".into(),
                    body,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(ms in proptest::collection::vec(arb_message(), 1..5)) {
            let payload = encode_batch(&ms).unwrap();
            prop_assert_eq!(decode_batch(&payload).unwrap(), ms);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
            let _ = split_batch(&bytes);
        }
    }
}
