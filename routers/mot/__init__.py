"""Mixture of Thoughts (MoT): latent collaboration among heterogeneous frozen experts.

After *Mixture of Thoughts: Learning to Aggregate What Experts Think, Not Just What They Say*.
For each query a small router picks the top-K frozen experts ("members") and designates a
primary; at uniformly spaced depths, interaction layers project every selected member's hidden
states into a shared latent space, where the primary's states cross-attend over its peers' and
the result is added, through a tanh gate initialised at 0, to the primary's residual stream.
Only the router and the interaction layers are trained; inference is one pass.

Modules (torch is imported inside them, never by this package or ``routers``):

* :mod:`routers.mot.members` — loading the frozen members (HF folders, ``smollm2``, the MiniLM
  wheel, depth-truncated views), their prompts in their own tokens, and their hidden states;
* :mod:`routers.mot.model` — the interaction layers and the forward hooks that apply them;
* :mod:`routers.mot.router` — the router (numpy at serve time, torch in training) and selection;
* :mod:`routers.mot.training` — the text set, caching, the joint objective, evaluation;
* :mod:`routers.mot.inference` — single-pass generation (prefill, then decode with interaction);
* :mod:`routers.mot.experts` — building small local experts (a tokenizer and a tiny LM);
* :mod:`routers.mot.strategy` — the ``mot`` strategy served as ``router/mot``.

The backend that serves the model is :mod:`workers.mot_backend` (``backend: mot``); see
``docs/mot.md`` for why serving is split that way.
"""
