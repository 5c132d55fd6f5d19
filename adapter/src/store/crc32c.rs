//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
//! etcd's HashKV.

const POLY: u32 = 0x82f6_3b78;

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i: u32 = 0;
    while i < 256 {
        let mut c = i;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i as usize] = c;
        i += 1;
    }
    t
};

/// A running checksum.
pub struct Crc(u32);

impl Default for Crc {
    fn default() -> Self {
        Crc(!0)
    }
}

impl Crc {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = TABLE[usize::from(c.to_le_bytes()[0] ^ b)] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The standard check value of CRC-32C, and RFC 3720's 32 zero bytes.
        let mut c = Crc::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xe306_9283);
        let mut z = Crc::default();
        z.update(&[0u8; 32]);
        assert_eq!(z.finish(), 0x8a91_36aa);
        // Fed in pieces, the same.
        let mut p = Crc::default();
        p.update(b"1234");
        p.update(b"56789");
        assert_eq!(p.finish(), 0xe306_9283);
    }
}
