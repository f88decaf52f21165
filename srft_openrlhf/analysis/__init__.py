"""The paper's analyses as commands (``srft analyze``), for any run of this project.

- ``token-shift`` (paper Sec. 3.1.1, Fig. 2 and Fig. A1): on the same response tokens, how
  far each fine-tuned model's token probabilities moved from the base model's,
  Δp = p_model(y_t) − p_base(y_t): histogram, shares of large moves, a heatmap of responses.
- ``trajectory`` (paper Sec. 3.1.2, Fig. 3 and Appendix E): every checkpoint of a run as a
  point whose coordinates are its distances to a few reference models (or reference texts),
  so that a run becomes a path through "probability space".

Modules: ``sources`` (models, run folders, prompts, tokenizers), ``scoring`` (responses and
teacher-forced token log-probs, cached and resumable), ``token_shift`` and ``trajectory``
(one function per quantity), ``plots`` (figures and the HTML heatmap), ``__main__`` (the
command line). Importing this package is light: torch, transformers and matplotlib are
imported by the functions that need them.
"""
