//! The hash functions Envoy's consistent hashing uses, bit for bit: XXH64 ([`xxhash64`],
//! Envoy's `HashUtil::xxHash64`) and libstdc++'s 64-bit MurmurHash2 ([`murmur2_64`], Envoy's
//! `MurmurHash::murmurHash2`).
//!
//! Guarantees: pure functions of their input, no allocation; the tests pin them to values
//! from the reference implementations for every length class.

const XXH_P1: u64 = 0x9E37_79B1_85EB_CA87;
const XXH_P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const XXH_P3: u64 = 0x1656_67B1_9E37_79F9;
const XXH_P4: u64 = 0x85EB_CA77_C2B2_AE63;
const XXH_P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline]
fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[inline]
fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

#[inline]
fn xxh64_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(XXH_P2))
        .rotate_left(31)
        .wrapping_mul(XXH_P1)
}

#[inline]
fn xxh64_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh64_round(0, val))
        .wrapping_mul(XXH_P1)
        .wrapping_add(XXH_P4)
}

/// XXH64 of `data` with `seed`: the function behind Envoy's `HashUtil::xxHash64(input, seed)`
/// (`source/common/common/hash.h`, which calls the xxHash library's `XXH64`; Envoy's default
/// seed is 0). Little-endian reads, as the reference implementation's canonical form.
pub fn xxhash64(data: &[u8], seed: u64) -> u64 {
    let len = data.len();
    let mut rest = data;
    let mut h = if len >= 32 {
        let mut v1 = seed.wrapping_add(XXH_P1).wrapping_add(XXH_P2);
        let mut v2 = seed.wrapping_add(XXH_P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(XXH_P1);
        while rest.len() >= 32 {
            v1 = xxh64_round(v1, read_u64(&rest[0..]));
            v2 = xxh64_round(v2, read_u64(&rest[8..]));
            v3 = xxh64_round(v3, read_u64(&rest[16..]));
            v4 = xxh64_round(v4, read_u64(&rest[24..]));
            rest = &rest[32..];
        }
        let mut acc = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        acc = xxh64_merge(acc, v1);
        acc = xxh64_merge(acc, v2);
        acc = xxh64_merge(acc, v3);
        xxh64_merge(acc, v4)
    } else {
        seed.wrapping_add(XXH_P5)
    };
    h = h.wrapping_add(len as u64);
    while rest.len() >= 8 {
        h ^= xxh64_round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(XXH_P1).wrapping_add(XXH_P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(XXH_P1);
        h = h.rotate_left(23).wrapping_mul(XXH_P2).wrapping_add(XXH_P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(XXH_P5);
        h = h.rotate_left(11).wrapping_mul(XXH_P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(XXH_P2);
    h ^= h >> 29;
    h = h.wrapping_mul(XXH_P3);
    h ^ (h >> 32)
}

/// The seed Envoy passes to [`murmur2_64`] for the ring (`MurmurHash::STD_HASH_SEED`, the
/// seed libstdc++'s `std::hash<std::string>` uses).
pub const MURMUR_STD_HASH_SEED: u64 = 0xc70f_6907;

#[inline]
fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// Envoy's `MurmurHash::murmurHash2` (`source/common/common/hash.cc`): the 64-bit
/// MurmurHash2 variant of libstdc++'s `_Hash_bytes`, with native (little-endian) 8-byte reads
/// and the 1..7 trailing bytes assembled little-endian. `RING_HASH` with
/// `hash_function: MURMUR_HASH_2` hashes its ring keys with it, seeded with
/// [`MURMUR_STD_HASH_SEED`].
pub fn murmur2_64(data: &[u8], seed: u64) -> u64 {
    const MUL: u64 = 0xc6a4_a793_5bd1_e995;
    let len = data.len();
    let mut hash = seed ^ (len as u64).wrapping_mul(MUL);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let d = shift_mix(read_u64(chunk).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let d = tail
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) + u64::from(b));
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The test input pattern: byte `i` is `i * 31 + 7` (mod 256).
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + 7) as u8).collect()
    }

    // ---- XXH64 ------------------------------------------------------------------------------

    // Expected values computed with the reference xxHash library (libxxhash 0.8.1, `XXH64`)
    // over `pattern(len)` for len 0..=40, which covers every code path: < 4, 4..8, 8..32 with
    // and without 4-byte and single-byte tails, exactly 32, and 32-byte stripes plus tails.
    const XXH_SEED0: [u64; 41] = [
        0xEF46DB3751D8E999,
        0xA96C7F0CE858BBB7,
        0xAC378C5993CD5F9A,
        0x56E6957632A487F9,
        0xC60D15B1E3FF8F04,
        0x808815858624DD4E,
        0xCF22B4E87E9BBD00,
        0xAFBEFC3D6C6F9A8E,
        0x3DA5C7AA269683E0,
        0x4B17A9BA9E215C09,
        0x6B889090B8A922B8,
        0x1FC070E44716BD8E,
        0x8FE8AB1C1FD0666E,
        0x0382284CC19C4ABB,
        0x1523F762201BA56E,
        0xAE2A37EB9357CAA7,
        0xA19AD429B02BC413,
        0xFE9F0FEB7EEEDC09,
        0xA44DBC53C815D4FE,
        0x3693E04C0DFC7DD2,
        0x0BFBADB368E7F37C,
        0xFE78683697D5C575,
        0xB07142420C77FE7F,
        0xE77B1FCEA84118C3,
        0x929438E5C2159EF9,
        0x7E6C95919380459F,
        0xAF2EFE1AA0CF37DC,
        0x8EDAA24C28D12EC6,
        0xA36B5C4091187D2A,
        0xEB1FEE1BF0954759,
        0x6A54EBE6FE40B928,
        0x4A74F3A1A39AD4A1,
        0x8D57D6A4671CC43D,
        0x62C9FD21ED857664,
        0x42CCE8A8F5FC5F1F,
        0x85CBCF9E0D9CBECA,
        0xA4475C606B0ABC3C,
        0x5D71D9FC4B676D9F,
        0x88A74AB8EAEB0218,
        0x1789542489E59CC4,
        0x49B45332E280F187,
    ];
    const XXH_SEED1: [u64; 41] = [
        0xD5AFBA1336A3BE4B,
        0x0766883A0A47A96A,
        0x49CBD4FC6C254BD5,
        0x598AFE4FBB09D9F6,
        0x5E9F99AA13DE2D02,
        0xB15C817D13965ACF,
        0x793E5710B24B7773,
        0xBD99F1FA0DE7B9A4,
        0x1B4E043A4021AA18,
        0x2A77C6E783FB18B1,
        0x432E4E97D1BDB485,
        0x7436A247F2927A92,
        0xAAF19EC96E7722CD,
        0xD6039376C2D09106,
        0x0670B047CE3C85C4,
        0xC88BD84841AF8AC9,
        0x78B588AFC3E5E956,
        0x9C4D638A8D88A249,
        0x0CDE785347804224,
        0x4FCAB7490FB86D91,
        0x69492A69814B2F76,
        0xD7C58A45DF4C7A95,
        0x41BAB6DD4099D2C8,
        0xC29F92B27CC6E3CB,
        0xC0601F839D43277B,
        0x7AA326AF91D11800,
        0x06DB4D9023278214,
        0x593471EE76F983BB,
        0x36FFC980DAA80F0C,
        0x31667449387D7A1F,
        0xF27116D7B0AC9AF5,
        0xD7AC4F4BEA4E460A,
        0x8F666909CFD00CC8,
        0xB1575979B72C805A,
        0x404E2A303D716A77,
        0x3398991956C04C98,
        0xADBC85402AD70EEA,
        0xEE086A7ED5E10EB9,
        0x5BA467EB4BAA030F,
        0x7CE6E8E101E3642C,
        0x4EA2E43CF7F9BDA8,
    ];
    const XXH_SEED_P1: [u64; 41] = [
        0x6EC6D05F61C7E7A7,
        0x0C810166B30122A5,
        0x183524BBFE689560,
        0x45163CDC31E15BE1,
        0xB000BCF3F8BCAEFE,
        0xCA04F3B2B8C1646D,
        0x98D5605F06A751A2,
        0xE10F33AF8C4758A3,
        0xCB4A80ECC7A094C6,
        0xD98EEA92DAACE6DB,
        0xBC522607615DCF78,
        0x9D89B8A163E8F95E,
        0x04717862C4FBFCA8,
        0xDA778E7A8A1859E1,
        0x92F042015C6A59F1,
        0x3EB4D31A7B8359CA,
        0x0E3F56E88F759A50,
        0x5006E8F2EEC7EFEA,
        0x419D2128073D0F78,
        0xD28FD5527313F218,
        0x1B90A1E7EEDBCA86,
        0xF34AFB9627FC6499,
        0xD4A3CC8AC069A7CB,
        0x314F87F240FF6738,
        0x4CF2AEC6C836678E,
        0x4CB6F8F801B167B3,
        0xC8C6846230AD5CAD,
        0xA8EB8B3285734329,
        0xFF59551F47D98F97,
        0x196DDADDA279B6D7,
        0xC6D614B9459AF3E1,
        0x659EC2B1252D56F5,
        0xF113D2457128CF6D,
        0x84575B860242FE41,
        0x83697DB95DACD76D,
        0x504E8B9E5CB09E5A,
        0x9928C5D314F8E1AD,
        0x33DDB9A885FC58A4,
        0x4C2C1FDD782A8130,
        0xE9732EC1485FD04D,
        0xAFB4F23E8EB64418,
    ];

    #[test]
    fn xxhash64_matches_reference_for_every_length_class() {
        for (seed, expected) in [(0u64, &XXH_SEED0), (1, &XXH_SEED1), (XXH_P1, &XXH_SEED_P1)] {
            for (len, &want) in expected.iter().enumerate() {
                assert_eq!(
                    xxhash64(&pattern(len), seed),
                    want,
                    "len {len} seed {seed:#x}"
                );
            }
        }
        // Longer inputs: many stripes plus tails.
        assert_eq!(xxhash64(&pattern(100), 0), 0xefa0ad2d3e70c151);
        assert_eq!(xxhash64(&pattern(1000), 0), 0x99594f4828043d35);
        assert_eq!(xxhash64(&pattern(100), 1), 0xcd8103aecd2ed5cf);
        assert_eq!(xxhash64(&pattern(1000), 1), 0x31db8080bc8eb541);
        assert_eq!(xxhash64(&pattern(100), XXH_P1), 0xe10cfef3a9a0a5c5);
        assert_eq!(xxhash64(&pattern(1000), XXH_P1), 0xd79c60b94f81cbf0);
    }

    #[test]
    fn xxhash64_known_strings() {
        // The xxHash README's empty-input value and "abc", and strings this module hashes
        // (values from the reference library).
        assert_eq!(xxhash64(b"", 0), 0xEF46DB3751D8E999);
        assert_eq!(xxhash64(b"abc", 0), 0x44bc2cf5ad770999);
        assert_eq!(xxhash64(b"a", 0), 0xd24ec4f1a98c6e5b);
        assert_eq!(xxhash64(b"hello world", 0), 0x45ab6734b21e6968);
        assert_eq!(xxhash64(b"127.0.0.1", 0), 0xc08b1587df65b7a7);
        assert_eq!(xxhash64(b"127.0.0.1:90", 0), 0xb6e9805bf4890ed5);
        assert_eq!(xxhash64(b"127.0.0.1:90", 1), 0x151eaa9a12ebfff5);
    }

    // ---- MurmurHash2 (libstdc++ _Hash_bytes) ------------------------------------------------

    // Expected values computed with libstdc++'s own `std::_Hash_bytes(ptr, len, seed)` (GCC,
    // x86-64), the function Envoy's `MurmurHash::murmurHash2` copies, over `pattern(len)`.
    const MURMUR_STD_SEED: [u64; 41] = [
        0x553E93901E462A6E,
        0xE2E622597C18899D,
        0x8AF55D0FE294960A,
        0x506B8A04520907CA,
        0x7D31AEA54D363E33,
        0x6970E71D38FF3C45,
        0x4A6FDB5BC5F8B9AC,
        0xC903E734C708C0CB,
        0x730030265EF36B74,
        0x0DE850D2872D4C37,
        0x7BD8563B5557CE3B,
        0xCE205E37E68FDD2F,
        0xC2DF64C6C665E416,
        0x0D1208904063BAEC,
        0x3298CFC534CA3A09,
        0xAF496D4F92584FF0,
        0xD0071C68E3ADC1FD,
        0x7EBFF244694D98C9,
        0x8BAB4A8B2362E4A7,
        0xA1CD0A0245E1E5DF,
        0x921A39FFCBD913BE,
        0x5828E3BA1DEE67F3,
        0x8BC3B3E1937A8D55,
        0x6102843BC5CBAE8F,
        0xC329D2B6F5A4D522,
        0x82C370C850377324,
        0x3E38A9BA1DDC9A33,
        0xC65D723828FED5D6,
        0x904FD348B4DA46E1,
        0xA228DAD9023B70E3,
        0xFD92AD25411F932C,
        0x0A5DD5BB9E31E342,
        0xDD240EFC28855CBC,
        0xF81AC3CB3325EC3F,
        0x9C9122BB64FE6251,
        0x9F7C8DFC19E30E33,
        0xC9FB879C606CE629,
        0xED642B9234435329,
        0x73D7E1E63D3229C6,
        0x234B64D890AC696A,
        0xEA569FF184823ED0,
    ];
    const MURMUR_SEED0: [u64; 41] = [
        0x0000000000000000,
        0x876D6099E0CEF9CB,
        0xA0F5C00640E840AF,
        0xDF8BB8D63B58BCF6,
        0xE5D983EAD620EE8B,
        0x294BADC9375527B7,
        0xDF3EC9A11C8D5D3F,
        0xF6AF1A3275C7D4D9,
        0xA1F1C2CC5A84FB8D,
        0x7E88F3B044023788,
        0x6C3A851FD8D52B49,
        0x343142EE0A282B6A,
        0x99F9B5C44291E8AD,
        0x5959BB2A9D657371,
        0xC7A7F5E5502EFEAE,
        0xBF5D9D9CD46759B7,
        0xC988097B426D7B2A,
        0xD85BD8EB4F1515B5,
        0x29F1CEEE3DDBD8D7,
        0xB4CC6924E93A3863,
        0x9475D8B6E382ACDA,
        0x0C5EC8CEC944FD2E,
        0x83A0AD825EEE8AAC,
        0xE072E8B5C2CBBA25,
        0x0B1D093C6E82B2A7,
        0x3880CB53E69AEC3A,
        0xDB887DB6A55C8A90,
        0x5720C7B180357261,
        0xDDFC92992A8CC48A,
        0x6924BE00E07A25F1,
        0xD0B80B27431581F4,
        0x54C1D307E932C904,
        0x0B4B382A626F30F1,
        0x41A84C76389CA5E2,
        0xF58685F8C86D7EF5,
        0x70523A780E2D05CF,
        0x474BF5FC466BA06D,
        0xA61B0CACF1049737,
        0xBF446E195586AFD7,
        0x28EBD41D6F8C2516,
        0x0009618738FA8402,
    ];

    #[test]
    fn murmur2_matches_libstdcxx_hash_bytes() {
        for (seed, expected) in [(MURMUR_STD_HASH_SEED, &MURMUR_STD_SEED), (0, &MURMUR_SEED0)] {
            for (len, &want) in expected.iter().enumerate() {
                assert_eq!(
                    murmur2_64(&pattern(len), seed),
                    want,
                    "len {len} seed {seed:#x}"
                );
            }
        }
        // A 64-bit seed (Envoy's seed is 32-bit, the function takes 64).
        assert_eq!(murmur2_64(&pattern(0), XXH_P1), 0x98D7089933B5F733);
        assert_eq!(murmur2_64(&pattern(13), XXH_P1), 0x023F42CDF68253FB);
        assert_eq!(murmur2_64(&pattern(40), XXH_P1), 0x378FE2EA0C45EB8A);
        // std::hash<std::string> (same function and seed).
        assert_eq!(murmur2_64(b"", MURMUR_STD_HASH_SEED), 6142509188972423790);
        assert_eq!(
            murmur2_64(b"abc", MURMUR_STD_HASH_SEED),
            3663726644998027833
        );
        assert_eq!(
            murmur2_64(b"hello world", MURMUR_STD_HASH_SEED),
            5577293430985752569
        );
    }
}
