"""The pose engine, usable without a project: skeleton, COCO data, fields, models, training, prediction, evaluation."""
