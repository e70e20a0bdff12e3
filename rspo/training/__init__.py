"""Training π_{t+1} from π_t with the RSPO loss on precomputed log-probs."""

from rspo.training.trainer import TrainExample, train_policy

__all__ = ["TrainExample", "train_policy"]
