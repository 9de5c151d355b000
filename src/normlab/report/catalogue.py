"""Every claim normlab checks, declared once: its statement, the source's words and who
makes it. The HTML report of ``normlab compare`` and the claims study both read them here.
"""

from __future__ import annotations

from normlab.report.claims import Claim

T1 = "the first tutorial (batch norm vs layer norm with the Keras MLP on MNIST)"
T2 = "the second tutorial (batch normalization in TensorFlow)"
T3 = "the third tutorial (batch norm '1s' vs '2s')"

TUTORIAL_ACCURACY = {"none": 97.38, "ln": 97.76}
"""The first tutorial's reported validation accuracies (%), MNIST MLP, 5 epochs."""

REPLICATION = Claim(
    "replication",
    "Replication of the first tutorial's experiment",
    T1,
    quote="97.38% validation accuracy without normalization, 97.76% with layer "
    "normalization (the MLP on MNIST, 5 epochs)",
)

# --- what normalization does to accuracy ------------------------------------------------

BN_BEATS_NONE = Claim(
    "bn-beats-none",
    "Batch norm improves accuracy",
    f"{T1}; {T2}",
    quote="batch normalization improves the accuracy",
    verbatim=True,
)
LN_BEATS_NONE = Claim(
    "ln-beats-none",
    "Layer norm improves accuracy",
    T1,
    quote="97.38% → 97.76% with layer normalization",
)
BN_SMALL_BATCH = Claim(
    "bn-small-batch",
    "Batch norm degrades at small batch sizes",
    "Wu & He 2018 (Group Normalization), repeated by " + T1,
    quote="BN's error increases rapidly when the batch size becomes smaller",
    verbatim=True,
)
LN_BATCH_INDEPENDENT = Claim(
    "ln-batch-independent",
    "Layer norm does not depend on the batch size",
    "Ba, Kiros & Hinton 2016; " + T1,
    quote="layer normalization ... does not depend on the batch size",
    margin=1.0,
)
SCALAR_STABLE = Claim(
    "scalar-stable",
    "Scalar statistics ('1s') are more stable at small batches",
    T3,
    quote="the single-statistic ('1s') version is more stable with small batches",
    stability=True,
)
CHANNEL_GENERALIZES = Claim(
    "channel-generalizes",
    "Per-channel statistics ('2s') generalize better",
    T3,
    quote="per-feature ('2s') statistics generalize better",
)
BN_CONVERGES_FASTER = Claim(
    "bn-converges-faster",
    "Batch norm converges faster",
    T1,
    quote="the model with batch normalization seems to converge quicker",
    verbatim=True,
)
LN_SLOWER_LARGE_BATCH = Claim(
    "ln-slower-large-batch",
    "Layer norm converges more slowly than batch norm at large batches",
    T1,
    quote="layer normalization may converge more slowly than batch normalization with "
    "large batch sizes in simple networks",
    verbatim=True,
)

# --- training ----------------------------------------------------------------------------

BN_HIGHER_LR = Claim(
    "bn-higher-lr",
    "Batch norm allows higher learning rates",
    f"{T1}; Ioffe & Szegedy 2015",
    quote="allowing for higher learning rates",
    verbatim=True,
)
BN_DEEP_TRAINABLE = Claim(
    "bn-deep-trainable",
    "Batch norm makes deep networks trainable",
    T1,
    quote="making it easier to train deep neural networks",
    verbatim=True,
)
BN_GRADIENT_RATIO = Claim(
    "bn-gradient-ratio",
    "Batch norm mitigates vanishing or exploding gradients",
    T1,
    quote="mitigating the vanishing or exploding gradient problem",
    verbatim=True,
)
BN_INIT_ROBUST = Claim(
    "bn-init-robust",
    "Batch norm reduces the reliance on careful initialization",
    f"{T2}; Ioffe & Szegedy 2015",
    quote="batch normalization reduces the dependence on careful weight initialization",
)
BN_REGULARIZES = Claim(
    "bn-regularizes",
    "Batch norm regularizes",
    "Ioffe & Szegedy 2015, §3.4; " + T2,
    quote="batch normalization regularizes the model",
)
LN_REGULARIZES = Claim(
    "ln-regularizes",
    "Layer norm regularizes",
    T1,
    quote="layer normalization also has a regularizing effect",
)
BN_REPLACES_DROPOUT = Claim(
    "bn-replaces-dropout",
    "Batch norm reduces the need for dropout",
    T1,
    quote="reducing the need for other regularization techniques such as dropout",
    verbatim=True,
)

# --- mechanisms and alternatives --------------------------------------------------------

BN_REDUCES_ICS = Claim(
    "bn-reduces-ics",
    "Batch norm reduces internal covariate shift",
    f"{T1}; {T2}; Ioffe & Szegedy 2015",
    quote="batch normalization reduces internal covariate shift",
)
BN_SMOOTH = Claim(
    "bn-smooth",
    "Batch norm smooths the loss landscape",
    "Santurkar et al. 2018 (abstract), repeated by " + T2,
    quote="it makes the optimization landscape significantly smoother",
    verbatim=True,
)
CHANNEL_HELPS_WIDE = Claim(
    "channel-helps-wide",
    "Per-channel statistics help more in wide layers",
    T3,
    quote="per-feature ('2s') statistics matter more in high-dimensional feature spaces",
)
GN_SMALL_BATCH = Claim(
    "gn-small-batch",
    "Group norm is a good choice at small batch sizes",
    f"{T1} (future directions); Wu & He 2018",
    quote="group normalization ... a good choice for small batch sizes",
)

# --- claims no experiment tests yet (each test says what it needs) -----------------------

LN_SEQUENCES = Claim(
    "ln-sequences",
    "Layer norm suits recurrent networks and transformers better than batch norm",
    T1,
    quote="layer normalization is better suited to recurrent neural networks and transformers",
)
BN_VARYING_LENGTH = Claim(
    "bn-varying-length",
    "Batch norm is less suited to sequences of varying length",
    T1,
    quote="batch normalization is less suited to sequences of varying length",
)
BN_INPUT_SHIFT = Claim(
    "bn-input-shift",
    "Batch norm degrades under highly variable input distributions; layer norm is robust",
    T1,
    quote="batch normalization's performance degrades with highly variable input distributions",
)
LN_ONLINE = Claim(
    "ln-online",
    "Layer norm suits online, real-time inference",
    T1,
    quote="layer normalization is suited to online and real-time inference (batch size 1)",
)
BN_OVERHEAD = Claim(
    "bn-overhead",
    "Batch norm adds computational overhead; layer norm adds less",
    T1,
    quote="batch normalization adds computational overhead ... layer normalization adds less",
)
SCALAR_CHEAPER = Claim(
    "scalar-cheaper",
    "Scalar statistics ('1s') are cheaper than per-channel ('2s')",
    T3,
    quote="the '1s' version is computationally cheaper",
)
BN_FASTER_WALL = Claim(
    "bn-faster-wall",
    "Batch norm makes training time shorter",
    T2,
    quote="batch normalization makes training faster",
)
CHANNEL_BATCH_FLUCTUATION = Claim(
    "channel-batch-fluctuation",
    "Per-channel statistics ('2s') are less sensitive to batch-size fluctuations",
    T3,
    quote="the '2s' version is less sensitive to fluctuations in batch size",
)
