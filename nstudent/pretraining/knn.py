"""kNN accuracy of an embedding: how well it separates classes with no training.

Each query takes the k most cosine-similar bank embeddings; their classes vote,
each vote weighted by exp(similarity / 0.1) (as in Wu et al., 2018), and ties go
to the lower class. Pure numpy, in query blocks.
"""

import numpy as np

VOTE_TEMPERATURE = 0.1


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(bank, bank_labels, queries, num_classes, k=20, block=1024):
    bank, queries = _unit(bank), _unit(queries)
    bank_labels = np.asarray(bank_labels, np.int64)
    k = min(k, len(bank))
    predicted = []
    for start in range(0, len(queries), block):
        similarity = queries[start:start + block] @ bank.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weight = np.exp(np.take_along_axis(similarity, nearest, 1) / VOTE_TEMPERATURE)
        votes = np.zeros((len(nearest), num_classes))
        np.add.at(votes, (np.arange(len(nearest))[:, None], bank_labels[nearest]), weight)
        predicted.append(np.argmax(votes, axis=1))
    return np.concatenate(predicted) if predicted else np.zeros(0, np.int64)


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=20):
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k)
    return float(np.mean(predicted == np.asarray(query_labels)))
