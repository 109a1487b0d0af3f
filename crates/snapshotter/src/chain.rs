//! Chain IDs: how containerd names the committed snapshot of a stack of layers.
//!
//! The OCI image spec defines `ChainID(L0) = DiffID(L0)` and
//! `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`. containerd's unpacker
//! labels each layer's snapshot with its chain ID (`containerd.io/snapshot.ref`) and passes the
//! chain ID of the layers below as the parent, so knowing the parent's chain ID and the set of
//! layers the cache disks hold is enough to tell whether the requested layer is on a disk.

use imc_api::Digest;

/// The chain ID of `diff_id` stacked on the chain `parent` (`None`: the bottom layer).
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
    }
}

/// The chain ID of a whole stack of diffIDs, bottom first (`None` for no layer).
pub fn chain_of(diff_ids: &[Digest]) -> Option<Digest> {
    diff_ids
        .iter()
        .fold(None, |parent, d| Some(chain_id(parent.as_ref(), d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(hex_char: char) -> Digest {
        format!("sha256:{}", hex_char.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        // Rows: (layers, expected chain ID).
        let a = d('a');
        let b = d('b');
        let ab = Digest::of(format!("{a} {b}").as_bytes());
        let aba = Digest::of(format!("{ab} {a}").as_bytes());
        let cases: Vec<(Vec<Digest>, Option<Digest>)> = vec![
            (vec![], None),
            (vec![a.clone()], Some(a.clone())),
            (vec![a.clone(), b.clone()], Some(ab.clone())),
            (vec![a.clone(), b.clone(), a.clone()], Some(aba)),
        ];
        for (layers, expected) in cases {
            assert_eq!(chain_of(&layers), expected, "layers {layers:?}");
        }
        assert_eq!(chain_id(Some(&a), &b), ab);
        assert_ne!(chain_id(Some(&b), &a), ab, "order matters");
    }

    #[test]
    fn matches_sha256sum() {
        // printf 'sha256:aaa… sha256:bbb…' | sha256sum
        let expected: Digest =
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
                .parse()
                .unwrap();
        assert_eq!(chain_of(&[d('a'), d('b')]), Some(expected));
    }
}
