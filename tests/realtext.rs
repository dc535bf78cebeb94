//! End-to-end checks on real text: WikiText-2's validation split from `../shared`
//! (never copied into the repository). Skipped, visibly by name, when the file is
//! absent.

use std::path::PathBuf;

use crate::common::Ctx;

/// The real file, or `None` after a visible skip of `test`.
fn valid_txt(test: &str) -> Option<PathBuf> {
    ausa_testkit::shared_file("data/wikitext-2/valid.txt", test).map(|p| p.canonicalize().unwrap())
}

/// Word count the way WikiText counts: whitespace-separated tokens of the whole file.
fn file_words(path: &PathBuf) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .count() as u64
}

fn write_dag(ctx: &Ctx, valid: &std::path::Path) {
    let text = format!(
        "[stages.corpus]\nkind = \"corpus\"\nsource = \"local\"\ntrain = [\"{}\"]\ntext_format = \"wikitext\"\n\n\
         [stages.doc_stats]\nkind = \"doc_stats\"\ninputs = [\"corpus\"]\n\n\
         [stages.subset]\nkind = \"subset\"\ninputs = {{ documents = \"corpus\", doc_stats = \"doc_stats\" }}\nfraction = 0.5\n\n\
         [stages.tokenizer]\nkind = \"tokenizer\"\ninputs = [\"subset\"]\nvocab_size = 4096\n\n\
         [stages.tokens]\nkind = \"tokenize\"\ninputs = {{ documents = \"corpus\", tokenizer = \"tokenizer\" }}\n\n\
         [stages.sequences]\nkind = \"sequences\"\ninputs = [\"tokens\"]\n\n\
         [stages.banks]\nkind = \"banks\"\ninputs = [\"sequences\"]\n\n\
         [stages.minhash]\nkind = \"minhash\"\ninputs = [\"banks\"]\n",
        valid.display()
    );
    ctx.write("wt2valid.toml", &text);
}

#[test]
fn wikitext2_validation_builds_into_articles_and_a_half_subset() {
    let Some(valid) = valid_txt("wikitext2_validation_builds_into_articles_and_a_half_subset")
    else {
        return;
    };
    let ctx = Ctx::new();
    write_dag(&ctx, &valid);
    ctx.run(&["build", "wt2valid.toml", "--quiet"]).ok();
    let corpus = ctx
        .run(&["show", "wt2valid.toml:corpus", "--json"])
        .ok()
        .json();
    let stats = &corpus["manifest"]["stats"];
    assert_eq!(
        stats["documents"], 60,
        "60 articles (level-1 headings) in WikiText-2 valid"
    );
    assert_eq!(
        stats["words"].as_u64().unwrap(),
        file_words(&valid),
        "no word lost or added"
    );
    let subset = ctx
        .run(&["show", "wt2valid.toml:subset", "--json"])
        .ok()
        .json();
    let s = &subset["manifest"]["stats"];
    assert!(s["relative_error"].as_f64().unwrap().abs() < 0.05, "{s}");
    assert!(s["histogram_divergence"].as_f64().unwrap() <= 0.05, "{s}");
    let tokens = ctx
        .run(&["show", "wt2valid.toml:tokens", "--json"])
        .ok()
        .json();
    let t = &tokens["manifest"]["stats"];
    let per_word = t["splits"]["train"]["tokens_per_word"].as_f64().unwrap();
    assert!(
        (1.0..2.0).contains(&per_word),
        "a 4k BPE on English gives 1-2 tokens per word: {t}"
    );
    let files: Vec<_> = tokens["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(
        files,
        ["tokens-train.arrow"],
        "only the train split has documents"
    );
    ctx.run(&["verify"]).ok();
}

/// MinHash accuracy on real sets: windows of WikiText-2 token ids (64 tokens, stride 32,
/// k = 128). For pairs of sets at several distances (overlapping neighbours share half
/// their window, far ones share common words only), the estimated Jaccard similarity
/// stays within 4 binomial standard deviations of the exact one, and over all pairs
/// the mean error is near zero.
#[test]
fn minhash_estimates_jaccard_on_real_windows() {
    use ausa_artifacts::{banks_path, minhash_path, BanksFile, SignaturesFile, Split};
    use std::collections::BTreeSet;
    let Some(valid) = valid_txt("minhash_estimates_jaccard_on_real_windows") else {
        return;
    };
    let ctx = Ctx::new();
    write_dag(&ctx, &valid);
    ctx.run(&["build", "wt2valid.toml:minhash", "--quiet"]).ok();
    let banks = BanksFile::open(banks_path(
        ctx.object_dir("wt2valid.toml:banks"),
        Split::Train,
    ))
    .unwrap();
    let sigs = SignaturesFile::open(minhash_path(
        ctx.object_dir("wt2valid.toml:minhash"),
        Split::Train,
    ))
    .unwrap();
    let k = sigs.k() as usize;
    assert_eq!(k, 128);
    assert_eq!(sigs.num_sets(), banks.num_sets());
    let set = |i: usize| -> BTreeSet<u32> { banks.set(i).unwrap().iter().collect() };
    let signature = |i: usize| &sigs.signatures()[i * k..(i + 1) * k];
    let (mut pairs, mut outside, mut error_sum) = (0, 0, 0.0);
    for i in (0..banks.num_sets().saturating_sub(40)).step_by(7) {
        for d in [1, 2, 5, 40] {
            let (a, b) = (set(i), set(i + d));
            let exact = a.intersection(&b).count() as f64 / a.union(&b).count() as f64;
            let estimate = ausa_stages::minhash::estimated_jaccard(signature(i), signature(i + d));
            let bound = 4.0 * (exact * (1.0 - exact) / k as f64).sqrt() + 1.0 / k as f64;
            outside += usize::from((estimate - exact).abs() > bound);
            error_sum += estimate - exact;
            pairs += 1;
        }
    }
    assert!(pairs > 1000, "only {pairs} pairs");
    // 4 sigma: about 1 pair in 16,000 falls outside by chance.
    assert!(
        outside <= pairs / 500,
        "{outside} of {pairs} pairs outside the bound"
    );
    let bias = error_sum / pairs as f64;
    assert!(bias.abs() < 0.01, "mean error {bias}");
}
