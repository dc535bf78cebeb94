//! The `tokenizer` and `tokenize` stages give byte-identical files across runs and
//! thread counts, with or without the `tokenizers` library's parallelism settings.
//!
//! One test in its own binary, so setting environment variables races with nothing.

mod tokenize_support;

use ausa_artifacts::Split;
use ausa_artifacts::TOKENIZER_FILE;
use tokenize_support::{corpus, run_tokenize, run_tokenizer, Built};

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn tokenizer_bytes(docs: &Built, threads: usize) -> (Vec<u8>, Built) {
    let (tok, _) = in_pool(threads, || run_tokenizer(docs, 1000)).unwrap();
    (std::fs::read(tok.path().join(TOKENIZER_FILE)).unwrap(), tok)
}

fn token_bytes(docs: &Built, tok: &Built, threads: usize) -> Vec<Vec<u8>> {
    let (out, _) = in_pool(threads, || run_tokenize(docs, tok)).unwrap();
    Split::ALL
        .iter()
        .map(|&s| std::fs::read(ausa_artifacts::tokens_path(out.path(), s)).unwrap())
        .collect()
}

#[test]
fn outputs_do_not_depend_on_threads_or_runs() {
    // Many short documents over a small vocabulary: many tied pair counts.
    let docs = corpus(3000);
    let (reference, tok) = tokenizer_bytes(&docs, 1);
    let tokens = token_bytes(&docs, &tok, 1);
    for threads in [2, 4, 1, 3] {
        assert!(
            tokenizer_bytes(&docs, threads).0 == reference,
            "tokenizer.json differs with {threads} threads"
        );
        assert!(
            token_bytes(&docs, &tok, threads) == tokens,
            "token files differ with {threads} threads"
        );
    }
    std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    std::env::set_var("RAYON_RS_NUM_THREADS", "1");
    assert!(
        tokenizer_bytes(&docs, 2).0 == reference,
        "tokenizer.json differs with library settings"
    );
    std::env::set_var("TOKENIZERS_PARALLELISM", "true");
    std::env::set_var("RAYON_RS_NUM_THREADS", "4");
    assert!(
        tokenizer_bytes(&docs, 4).0 == reference,
        "tokenizer.json differs with library settings"
    );
}
