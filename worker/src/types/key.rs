//! Keys of keyed streams. The encoding feeds the key-group hash and the state key, so it is
//! part of the checkpoint format: never change an existing impl.

/// Records that cross a shuffle: between TaskManagers they travel serialized (postcard).
/// Postcard has no field names, so a record type must serialize every field every time:
/// `#[serde(skip_serializing_if = ..)]` makes such records fail to decode on the other side.
pub trait Data: Send + serde::Serialize + serde::de::DeserializeOwned + 'static {}

impl<T: Send + serde::Serialize + serde::de::DeserializeOwned + 'static> Data for T {}

/// Keys also serialize: they cross the network with their record (between TaskManagers),
/// and a timer hands its key back to `on_timer`.
pub trait Key: Send + serde::Serialize + serde::de::DeserializeOwned + 'static {
    fn write_key(&self, out: &mut Vec<u8>);
}

impl Key for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl Key for Vec<u8> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

/// The key of a non-keyed operator's records (a broadcast-connected function runs in a keyed
/// task): one empty key.
impl Key for () {
    fn write_key(&self, _out: &mut Vec<u8>) {}
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, i32, i64);

/// Tuple parts are length-prefixed so ("ab","c") and ("a","bc") differ.
impl<A: Key, B: Key> Key for (A, B) {
    fn write_key(&self, out: &mut Vec<u8>) {
        write_part(&self.0, out);
        write_part(&self.1, out);
    }
}

fn write_part(part: &impl Key, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    part.write_key(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(k: &impl Key) -> Vec<u8> {
        let mut v = Vec::new();
        k.write_key(&mut v);
        v
    }

    #[test]
    fn tuple_encoding_is_unambiguous() {
        let a = ("ab".to_string(), "c".to_string());
        let b = ("a".to_string(), "bc".to_string());
        assert_ne!(bytes(&a), bytes(&b));
    }
}
