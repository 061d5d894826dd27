"""Every config key detgn knows, with its default.

Defaults follow the GN paper's Mask R-CNN setting (REFERENCE.md): an R50-FPN
Mask R-CNN fine-tuned with frozen BN, Detectron's BGR pixel means, a schedule
written for 16 images per iteration that the trainer rescales linearly to the
real number of images per iteration. YAML files inherit from these and state
only what differs.
"""
from yacs.config import CfgNode as CN

_C = CN()
# Bumped when a key is renamed or its meaning changes.
_C.VERSION = 1

# ---------------------------------------------------------------------------- #
# Model
# ---------------------------------------------------------------------------- #
_C.MODEL = CN()
# The meta-architecture; "GeneralizedRCNN" is Mask R-CNN / Faster R-CNN.
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Whose conventions the keys that differ between implementations follow:
# "" (each key as set; the defaults are detectron2's), "detectron2", "detectron" (Detectron,
# the GN paper's code: smooth-L1 betas 1/9 and 1, unaligned RoIAlign, border anchors
# dropped, 2x LR and no decay for biases, its mask paste, MSRA-filled mask predictor,
# Xavier-filled ResNet convs) or "torchvision" (its Mask R-CNN: RGB torchvision pixel
# statistics, rounded anchors, unaligned RoIAlign, smooth-L1 1/9, its mask paste).
# A key that the config file (or a _BASE_ of it) or an override sets keeps that value;
# the keys each name sets are in detgn/config/conventions.py (CONVENTIONS).
_C.MODEL.CONVENTION = ""
# Predict masks (Mask R-CNN) in addition to boxes.
_C.MODEL.MASK_ON = True
# "cpu", "cuda" or "cuda:N". Under torchrun each process uses its LOCAL_RANK GPU.
_C.MODEL.DEVICE = "cpu"
# Weights to start from: a path, a URL or a model-zoo name
# ("detgn://ImageNetPretrained/R-50-GN"). "" trains from scratch.
_C.MODEL.WEIGHTS = ""
# torch.compile (inductor) of a part of the model: "" (none, eager) or "backbone" (the
# backbone with its FPN; each new input shape compiles again, 39 s per shape for the CPU
# demo). Off everywhere: its speed was not validly measured (under ATEN_CPU_CAPABILITY=avx2
# inductor's code gave NaN features, so it is refused where inductor would generate AVX2
# code). `detgn benchmark --modes default,compiled` measures it on a config.
_C.MODEL.COMPILE = ""
# Not needed for Detectron .pkl weights (read with a restricted unpickler that only
# rebuilds dicts, strings, numbers and numpy arrays) nor for .pth state dicts (read
# with torch.load(weights_only=True)). True is the escape hatch for a file that those
# safe readers refuse because it holds other Python objects: it is then read with full
# unpickling, which can run arbitrary code. Set True only for files you trust.
_C.MODEL.WEIGHTS_ALLOW_PICKLE = False
# Per-channel mean and std of the input, in the order of INPUT.FORMAT. Detectron's
# BGR means and a std of 1 (no division), matching Caffe2 pre-trained models.
_C.MODEL.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# Default for every RoIAlign: True uses the half-pixel-corrected RoIAlign, False
# the legacy Detectron/torchvision convention. Each head may override it below.
_C.MODEL.POOLER_ALIGNED = True

# ---------------------------------------------------------------------------- #
# Backbone
# ---------------------------------------------------------------------------- #
_C.MODEL.BACKBONE = CN()
# "build_resnet_fpn_backbone" (FPN) or "build_resnet_c4_backbone" (C4).
_C.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
# 0: nothing frozen (from scratch, StopGrad off); 1: the stem; k >= 2: stem and
# res2..resk. Frozen BN-type norms in frozen stages become FrozenBN.
_C.MODEL.BACKBONE.FREEZE_AT = 2

# ---------------------------------------------------------------------------- #
# ResNet
# ---------------------------------------------------------------------------- #
_C.MODEL.RESNETS = CN()
# 18, 34 (basic blocks), 50, 101, 152 (bottleneck blocks).
_C.MODEL.RESNETS.DEPTH = 50
# Stages whose outputs the backbone returns (C4 uses ["res4"]).
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
# Norm of every ResNet conv: "FrozenBN" (BN*), "GN", "LN", "IN", "BN", "SyncBN", "".
_C.MODEL.RESNETS.NORM = "FrozenBN"
# Groups and width per group of the 3x3 conv (1 x 64 is plain ResNet).
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Channels of the stem output and of res2's output.
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
# False puts a block's stride on the 3x3 conv (the paper's models); True on the first 1x1.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = False
# Dilation of res5 (1 or 2).
_C.MODEL.RESNETS.RES5_DILATION = 1
# Start each residual block's last norm with gamma = 0 (the block starts as the identity):
# the GN paper's ImageNet pre-training recipe. Detection fine-tuning loads gamma from the
# weights, and the paper's from-scratch detectors keep gamma = 1, hence False by default.
_C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = False
# Init of the ResNet convs: "msra" (Caffe2 MSRAFill: kaiming normal, fan-out; detectron2) or
# "xavier" (Caffe2 XavierFill: uniform +-sqrt(3/fan_in); Detectron's GN ResNets). Only a
# from-scratch model keeps it: pre-trained weights replace it.
_C.MODEL.RESNETS.CONV_INIT = "msra"

# ---------------------------------------------------------------------------- #
# FPN
# ---------------------------------------------------------------------------- #
_C.MODEL.FPN = CN()
# Backbone stages the pyramid is built on.
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
# Channels of every pyramid level.
_C.MODEL.FPN.OUT_CHANNELS = 256
# Norm of the lateral and output convs ("" keeps a conv bias and no norm).
_C.MODEL.FPN.NORM = ""
# How the top-down path is merged: "sum" or "avg".
_C.MODEL.FPN.FUSE_TYPE = "sum"

# ---------------------------------------------------------------------------- #
# Group Normalization (used by every part whose NORM is GN)
# ---------------------------------------------------------------------------- #
_C.MODEL.GROUP_NORM = CN()
# Number of groups; -1 to use DIM_PER_GP instead. Exactly one of the two is > 0.
_C.MODEL.GROUP_NORM.NUM_GROUPS = 32
# Channels per group; -1 to use NUM_GROUPS instead.
_C.MODEL.GROUP_NORM.DIM_PER_GP = -1
# Epsilon added to the variance.
_C.MODEL.GROUP_NORM.EPSILON = 1e-5

# ---------------------------------------------------------------------------- #
# EvalNorm (shared/papers/evalnorm.txt): evaluation-time statistics for BN layers
# ---------------------------------------------------------------------------- #
# Every "BN" layer (detgn.layers.BatchNorm2d; not FrozenBN, not SyncBN) can normalise
# a sample at evaluation with mu = a*mu_i + (1-a)*mu_E and
# var = b*var_i + (1-b)*var_E + b(1-b)(mu_i-mu_E)^2 (mu_i, var_i: the sample's own
# statistics; mu_E, var_E: the running averages), a = b = 0 being plain BN and
# a = b = 1 InstanceNorm. Each layer records the number of samples B it normalised
# together in training (checkpointed), which the 1/B^2 rule uses.
_C.MODEL.EVALNORM = CN()
# Evaluate BN layers with EvalNorm statistics (False: the running averages, plain BN).
_C.MODEL.EVALNORM.ENABLED = False
# Where each layer's (alpha, beta) come from. "online": fitted during training by an
# auxiliary L1 loss (loss_evalnorm) that reaches only alpha and beta, so the model's
# own training is bit-for-bit the same as without EvalNorm; "offline": the values in
# the weights (written by tools/calibrate_norm.py --method evalnorm_offline or
# evalnorm_rule); "rule": alpha = beta = 1/B^2 from each layer's recorded B.
_C.MODEL.EVALNORM.MODE = "online"
# Weight of the online auxiliary loss (it reaches only alpha and beta).
_C.MODEL.EVALNORM.LOSS_WEIGHT = 1.0
# LR of alpha and beta relative to SOLVER.BASE_LR (same schedule, no weight decay).
_C.MODEL.EVALNORM.LR_FACTOR = 1.0

# ---------------------------------------------------------------------------- #
# Image classifier (backbone pre-training: MODEL.META_ARCHITECTURE "ImageClassifier")
# ---------------------------------------------------------------------------- #
_C.MODEL.CLASSIFIER = CN()
# Number of classes (ImageNet: 1000).
_C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
# The ResNet stage whose globally average-pooled output feeds the linear classifier.
_C.MODEL.CLASSIFIER.IN_FEATURE = "res5"

# ---------------------------------------------------------------------------- #
# Anchors
# ---------------------------------------------------------------------------- #
_C.MODEL.ANCHOR_GENERATOR = CN()
# One list of sizes per feature map: FPN uses one size per level, C4 all five on
# its single map ([[32, 64, 128, 256, 512]]).
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
# Aspect ratios (height / width) of the anchors at every location.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# Offset of the first anchor centre, as a fraction of the stride.
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0
# Round the cell anchors to whole pixels (torchvision's AnchorGenerator does): P2's
# ratio-0.5 anchor becomes [-23, -11, 23, 11] instead of [-22.63, -11.31, 22.63, 11.31].
_C.MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS = False
# Each level's stride from the padded image: (padded height // map height, padded width //
# map width), as torchvision's AnchorGenerator computes it (an 800-px side padded to 800 gives a
# P6 map of 13 and a stride of 61, not 64). False: the backbone's nominal strides (detectron2).
_C.MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE_SIZE = False

# ---------------------------------------------------------------------------- #
# RPN
# ---------------------------------------------------------------------------- #
_C.MODEL.RPN = CN()
# Feature maps the RPN runs on (C4: ["res4"]).
_C.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
# Anchors crossing the image border by more than this many pixels are ignored
# in training; -1 keeps them all.
_C.MODEL.RPN.BOUNDARY_THRESH = -1
# IoU below the first value is negative, above the second positive.
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
# Anchors sampled per image for the RPN loss, and their positive fraction.
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# Weights of the (dx, dy, dw, dh) box coding.
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# Smooth-L1 beta for the RPN box loss (0 gives L1).
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
# Weight of the RPN losses.
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
# Top-k proposals kept per feature level before NMS, in training and at test.
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
# Proposals kept per image after NMS (over all levels).
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
# NMS IoU threshold of the proposals.
_C.MODEL.RPN.NMS_THRESH = 0.7
# Channels of the RPN's shared 3x3 conv (-1: same as its input).
_C.MODEL.RPN.CONV_DIMS = [-1]

# ---------------------------------------------------------------------------- #
# RoI heads
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_HEADS = CN()
# "StandardROIHeads" (FPN: separate box and mask heads) or "Res5ROIHeads" (C4).
_C.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
# Number of foreground classes (COCO: 80).
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
# Feature maps the RoI heads pool from (C4: ["res4"]).
_C.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
# RoIs sampled per image in training and their foreground fraction.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
# IoU >= this with a ground-truth box makes a RoI foreground.
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
# Add the ground-truth boxes to the proposals in training.
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True
# Detections with a lower score are dropped at test time.
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
# Per-class NMS IoU threshold at test time.
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5

# ---------------------------------------------------------------------------- #
# Box head
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_BOX_HEAD = CN()
# "2fc" is NUM_CONV=0, NUM_FC=2; "4conv1fc" is NUM_CONV=4, NUM_FC=1.
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 2
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
# Norm of the box head convs ("", "GN", ...). FC layers take no norm.
_C.MODEL.ROI_BOX_HEAD.NORM = ""
# RoIAlign output size and sampling ratio of the box head.
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
# Per-head RoIAlign convention; null follows MODEL.POOLER_ALIGNED.
_C.MODEL.ROI_BOX_HEAD.POOLER_ALIGNED = None
# Weights of the (dx, dy, dw, dh) coding of the second stage.
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Smooth-L1 beta of the box regression loss (0 gives L1).
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
# Class-agnostic regression (one box per RoI) instead of one per class.
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False

# ---------------------------------------------------------------------------- #
# Mask head
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_MASK_HEAD = CN()
# Number and width of the 3x3 convs before the 2x2 deconv.
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
# Norm of the mask head convs.
_C.MODEL.ROI_MASK_HEAD.NORM = ""
# RoIAlign output size (masks are predicted at twice this size).
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2
# Per-head RoIAlign convention; null follows MODEL.POOLER_ALIGNED.
_C.MODEL.ROI_MASK_HEAD.POOLER_ALIGNED = None
# One mask per RoI instead of one per class.
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
# Init of mask_fcn_logits: "gaussian" (N(0, 0.001), detectron2) or "msra" (MSRAFill, as
# Detectron's Mask R-CNN configs set with MRCNN.CONV_INIT, and torchvision).
_C.MODEL.ROI_MASK_HEAD.PREDICTOR_INIT = "gaussian"
# How the M x M masks are pasted into the image at test time: "grid_sample" (detectron2:
# bilinear at pixel centres inside the box), "detectron" or "torchvision" (the mask padded
# to M + 2, its box scaled by (M + 2) / M and cut to whole pixels, then resized; ~1 px
# larger masks). Use the peer's paste to compare mask AP with the peer's numbers.
_C.MODEL.ROI_MASK_HEAD.PASTE_METHOD = "grid_sample"

# ---------------------------------------------------------------------------- #
# Input
# ---------------------------------------------------------------------------- #
_C.INPUT = CN()
# Shorter side in training: one size is drawn per image from this list.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# Longer side cap in training.
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Shorter side and longer side cap at test time.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# How test images are resized: "opencv" (the mapper resizes the uint8 image, sides rounded:
# 480x640 -> 800x1067) or "torchvision" (the model resizes the normalised float image with
# bilinear interpolation and torchvision's scale-factor rule, sides floored: 480x640 ->
# 800x1066, as GeneralizedRCNNTransform). Training always resizes in the mapper.
_C.INPUT.RESIZE_TEST = "opencv"
# Probability of a horizontal flip in training.
_C.INPUT.RANDOM_FLIP = 0.5
# Channel order the model sees: "BGR" (Caffe2 / Detectron weights) or "RGB".
_C.INPUT.FORMAT = "BGR"
# Masks as "polygon" or "bitmask" in training (RLE annotations are bitmasks).
_C.INPUT.MASK_FORMAT = "polygon"

# Classification inputs (ImageFolder datasets, MODEL.META_ARCHITECTURE "ImageClassifier").
_C.INPUT.CLASSIFY = CN()
# Training: a random crop covering MIN_AREA..1 of the image (aspect 3/4..4/3),
# resized to TRAIN_CROP x TRAIN_CROP, flipped with INPUT.RANDOM_FLIP.
_C.INPUT.CLASSIFY.TRAIN_CROP = 224
_C.INPUT.CLASSIFY.MIN_AREA = 0.08
# Test: shorter side resized to TEST_RESIZE, then the central TEST_CROP x TEST_CROP.
_C.INPUT.CLASSIFY.TEST_RESIZE = 256
_C.INPUT.CLASSIFY.TEST_CROP = 224

# ---------------------------------------------------------------------------- #
# Datasets
# ---------------------------------------------------------------------------- #
_C.DATASETS = CN()
# Names registered in detgn.data.DatasetCatalog.
_C.DATASETS.TRAIN = ("coco_2017_train",)
_C.DATASETS.TEST = ("coco_2017_val",)
# What to do with bad annotations (detgn/data/datasets/coco_checks.py). "drop_degenerate":
# annotations that describe no object (zero-size box, box with no area in the
# image, polygons with < 3 distinct points or no area) are dropped, boxes reaching
# outside the image clipped, degenerate parts of multi-polygon masks removed, all
# counted and named by annotation id in one log line; structural problems (unknown
# category, image id missing from 'images', malformed fields, duplicate ids) stop
# loading with the record named. The real COCO 2017 train file has two zero-height
# boxes, dropped here as Detectron/detectron2/mmdetection do. "error": any problem
# stops loading. "skip": structurally bad annotations are dropped (counted) too.
_C.DATASETS.ON_BAD_ANNOTATION = "drop_degenerate"

# ---------------------------------------------------------------------------- #
# Data loader
# ---------------------------------------------------------------------------- #
_C.DATALOADER = CN()
# Worker processes per training process (0 loads in the main process).
_C.DATALOADER.NUM_WORKERS = 2
# Group images of like aspect ratio into a batch (only matters with IMS_PER_GPU > 1).
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# Width/height bounds of the aspect-ratio groups: (1.0,) is landscape vs portrait
# (detectron2's grouping). Finer groups, e.g. (0.6, 0.8, 1.0, 1.25, 1.6), pad a batch less
# when the images' aspect ratios vary widely.
_C.DATALOADER.ASPECT_RATIO_BOUNDS = (1.0,)
# Drop training images that have no usable annotation.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# Training image files that fail to read (missing, truncated, not an image) are
# skipped: each is warned about once, remembered (also across --resume and between
# processes) and never read again. What is limited is how much of the training set is
# unusable: training stops with an error listing the files once more DISTINCT files
# have failed than the larger of MAX_BAD_IMAGES and MAX_BAD_IMAGES_FRACTION x the
# number of training images (both 0: the first failure stops it), or when no readable
# image is left. tools/validate_dataset.py lists every unreadable file beforehand.
_C.DATALOADER.MAX_BAD_IMAGES = 10
# Fraction of the training images allowed to be unreadable (0.001: 117 of COCO
# train2017's 117k); see MAX_BAD_IMAGES.
_C.DATALOADER.MAX_BAD_IMAGES_FRACTION = 0.001

# ---------------------------------------------------------------------------- #
# Solver
# ---------------------------------------------------------------------------- #
_C.SOLVER = CN()
# Images per process (per GPU). The paper fine-tunes with 1 image per GPU.
_C.SOLVER.IMS_PER_GPU = 1
# Batches of IMS_PER_GPU images whose gradients each process sums before one optimizer
# step (gradient accumulation; DDP syncs once per step). An iteration then takes
# IMS_PER_GPU x GRAD_ACCUM_STEPS images per process, while every norm layer still
# normalises IMS_PER_GPU images together: 1 process with IMS_PER_GPU 2 and GRAD_ACCUM_STEPS
# 8 steps as 8 GPUs with 2 images each do (BN's running averages are updated once per
# batch, 8 times per step, where DDP keeps rank 0's one update). Each batch's loss is
# divided by GRAD_ACCUM_STEPS, so a step equals one on the whole batch for per-sample
# norms (GN, LN, IN, frozen BN). 1: no accumulation.
_C.SOLVER.GRAD_ACCUM_STEPS = 1
# Total images per iteration that BASE_LR, MAX_ITER, STEPS and WARMUP_ITERS are
# written for. The trainer applies the linear scaling rule to the actual
# world_size x IMS_PER_GPU x GRAD_ACCUM_STEPS.
_C.SOLVER.REFERENCE_IMS_PER_BATCH = 16
# Rescale the schedule to the actual batch (False: use the numbers as written).
_C.SOLVER.SCALE_SCHEDULE = True
# Learning rate for the reference batch.
_C.SOLVER.BASE_LR = 0.02
# Iterations of the schedule at the reference batch ("2x" = 180k, "long" = 270k).
_C.SOLVER.MAX_ITER = 180000
# Iterations at which the LR is multiplied by GAMMA.
_C.SOLVER.STEPS = (120000, 160000)
_C.SOLVER.GAMMA = 0.1
# Linear warmup from WARMUP_FACTOR x LR over WARMUP_ITERS iterations.
_C.SOLVER.WARMUP_ITERS = 500
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
# "SGD" (momentum; what the paper and Detectron use) or "AdamW" (decoupled weight
# decay; converges faster in very short from-scratch runs such as the CPU demo).
_C.SOLVER.OPTIMIZER = "SGD"
# SGD momentum (AdamW uses it as beta1).
_C.SOLVER.MOMENTUM = 0.9
# AdamW's beta2 (unused by SGD).
_C.SOLVER.ADAM_BETA2 = 0.999
# Weight decay of conv/fc weights.
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Weight decay of every normalization layer's gamma and beta (GN, BN, LN, IN).
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# LR multiplier and weight decay of biases.
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
# Save a checkpoint every this many iterations (of the rescaled schedule).
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Keep this many most recent periodic checkpoints (model_final is always kept).
_C.SOLVER.MAX_TO_KEEP = 3
# Clip gradients to this total norm (0 disables).
_C.SOLVER.CLIP_GRADIENTS = 0.0
# When the schedule in the config differs from the one in a resumed checkpoint:
# "apply" uses the config's (and says so), "refuse" stops with a message.
_C.SOLVER.ON_SCHEDULE_CHANGE = "apply"
_C.SOLVER.AMP = CN()
# Mixed precision on CUDA (ignored, with a notice, on the CPU).
_C.SOLVER.AMP.ENABLED = False

# ---------------------------------------------------------------------------- #
# Test
# ---------------------------------------------------------------------------- #
_C.TEST = CN()
# Evaluate every this many iterations (0: only at the end).
_C.TEST.EVAL_PERIOD = 0
# Detections kept per image.
_C.TEST.DETECTIONS_PER_IMAGE = 100
# float16 autocast for inference on CUDA (Predictor, evaluation, benchmark). Scores, boxes and
# mask probabilities are still computed in float32 from the network's outputs. On the CPU
# CPU.BF16 decides instead; this key is ignored there.
_C.TEST.AMP = False
# PreciseBN: before each evaluation, replace the running statistics of every "BN"
# layer (not FrozenBN, not SyncBN) by the exact pooled mean and variance of its
# inputs over NUM_ITER training batches (summed over all processes).
_C.TEST.PRECISE_BN = CN()
# Recompute the BN statistics this way before each evaluation (and at the end of training).
_C.TEST.PRECISE_BN.ENABLED = False
# Training batches the statistics are pooled over.
_C.TEST.PRECISE_BN.NUM_ITER = 200

# ---------------------------------------------------------------------------- #
# Distributed runs: hangs, preemption (docs/multinode.md)
# ---------------------------------------------------------------------------- #
_C.DIST = CN()
# Seconds a collective waits for a missing rank before every waiting rank fails with a message
# naming the collective and the rank that stopped answering (also the limit for all ranks to join
# the group). It must exceed the longest legitimate wait, measured on 2 cores of an AMD EPYC Zen 5:
# a step of fpn_gn_long.yaml (1 image of 800x1216, bf16 autocast) 7.2 s, rank 0 writing its
# checkpoint (365 MB) 1.0-1.5 s, and the longest, rank 0 scoring COCO val2017 while the others wait
# (0.008 s/image with 100 detections: ~41 s for 5000 images). 600 s is over 10x that: a hang is
# reported in 10 minutes instead of torch's 30. See docs/multinode.md.
_C.DIST.TIMEOUT_SECONDS = 600.0
# After a SIGTERM, the run finishes its step, saves a checkpoint and exits with status 143 ("requeue
# me"); if that takes longer than this many seconds it exits at once (the next start resumes from the
# previous checkpoint). Below the usual 30 s between SIGTERM and SIGKILL (Kubernetes' default grace,
# torchrun's --shutdown-timeout, a GCP preemption notice), leaving a step (7.2 s for fpn_gn_long.yaml
# on 2 CPU cores, well under 1 s on a GPU) and a checkpoint (1-1.5 s) room to spare. 0: no limit.
_C.DIST.PREEMPT_GRACE_SECONDS = 25.0

# ---------------------------------------------------------------------------- #
# Misc
# ---------------------------------------------------------------------------- #
# Everything a run writes: config dump, logs, metrics, checkpoints, results.
_C.OUTPUT_DIR = "./output"
# Random seed; < 0 draws one (and logs it).
_C.SEED = 0
# Print the resolved schedule, norms and parameter groups at start-up.
_C.VERBOSE_STARTUP = True
# Write training metrics (console line, metrics.json, TensorBoard) every this many iterations.
_C.LOG_PERIOD = 20
# Run-time speed switches (the paper configs leave them off).
_C.CPU = CN()
# Use channels-last memory format for the model and inputs.
_C.CPU.CHANNELS_LAST = False
# bfloat16 autocast on the CPU, for training and inference (Predictor, evaluation, benchmark):
# "auto" turns it on where the CPU has native bf16 (AMX-BF16 or AVX512-BF16: 1.3-2x faster)
# and keeps fp32 elsewhere (emulated bf16 is slower); "on" / "off" force it (True / False are
# read as on / off). The start-up log says which was chosen and why. Exported models are fp32.
_C.CPU.BF16 = "auto"
# torch.set_num_threads; 0 keeps torch's default.
_C.CPU.NUM_THREADS = 0


def get_cfg() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
