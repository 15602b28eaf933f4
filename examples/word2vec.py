"""TensorFlow's ``word2vec_basic.py`` tutorial (skip-gram, NCE loss, SGD at 1.0) ported to
compatopt; its TF1 original, run on the same inputs, is ``word2vec_tf1_original.py``.

What changed from the original, line for line:

* imports: ``import compatopt as co`` and ``jax.numpy as jnp`` for ``tensorflow``; TF's ops
  become their namesakes: ``tf.nn.embedding_lookup`` / ``tf.nn.nce_loss`` →
  ``co.nn.embedding_lookup`` / ``co.nn.nce_loss`` (same arguments), ``tf.reduce_mean`` /
  ``tf.reduce_sum`` / ``tf.sqrt`` / ``tf.square`` / ``tf.matmul`` → ``jnp.mean`` / ``jnp.sum``
  / ``jnp.sqrt`` / ``jnp.square`` / ``jnp.matmul``, ``tf.train.*`` → ``co.train.*``,
  ``tf.name_scope`` → ``co.name_scope``;
* ``tf.Variable(...)`` → ``co.Variable(...)`` (same names: ``embeddings/Variable:0`` ...);
  ``jnp`` functions read them through ``.value``;
* the graph and the ``Session`` loop → a ``@co.function`` step taking the placeholders'
  values (``sess.run([optimizer, merged, loss], feed_dict)`` → ``train_step(...)``, whose
  ``.loss`` is the loss of that step), ``similarity.eval()`` → ``similarity()``;
* left out: TensorBoard summaries, ``RunMetadata``, the projector config (no compatopt
  equivalent) and ``tf.device('/cpu:0')``; the t-SNE plot only with ``--tsne PNG``.

As in the TF1 original, the inputs are not the tutorial's text8 download: a deterministic
built-in corpus (:func:`make_corpus`: 106,665 words, 527 distinct; the 499 most common and ``UNK``
make the 500-word vocabulary), and :func:`make_data` draws the initial weights, the batches
(the tutorial's ``generate_batch`` with Python's ``random`` seeded) and, for a replay of the
TF1 original, the negatives (``co.nn.log_uniform_candidate_sampler``, as ``nce_loss`` would
draw them), since TF's and JAX's random generators differ. Without ``--write-npz`` the
negatives are drawn inside the step by ``nce_loss`` itself, a new set each step, as in TF1.

    python examples/word2vec.py                 # 20001 steps, < 60 s on 2 cores
    python examples/word2vec.py --steps 60 --write-npz /tmp/w2v.npz   # inputs for the original

``tests/test_port_word2vec.py`` replays the TF1 original's recorded run
(``tools/make_tf1_word2vec_fixtures.py``) through this file's code.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import random
import sys
from tempfile import gettempdir
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

VOCABULARY_SIZE = 500
NUM_STEPS = 20001

# The built-in corpus: word classes whose members share their contexts, so that after
# training the nearest neighbours of a word are mostly of its own class.
WORDS = {
    "animal": "cat dog horse cow sheep goat pig mouse rabbit fox wolf bear lion tiger deer "
              "duck goose owl eagle frog snake whale shark monkey",
    "food": "bread cheese apple pear plum rice soup cake milk honey butter egg fish meat corn "
            "bean grape lemon melon nut pie salad tea wine",
    "color": "red blue green yellow black white brown grey pink purple golden silver violet "
             "amber crimson scarlet ivory navy olive teal",
    "place": "house garden forest river village city market school church farm field hill "
             "lake beach castle bridge station harbor valley road park library kitchen island "
             "tavern mill meadow desert cave",
    "person": "farmer teacher doctor king queen child mother father soldier sailor baker "
              "painter poet merchant priest student nurse judge miller hunter prince "
              "princess girl boy uncle aunt sister brother widow bishop",
    "action": "saw found liked ate took gave carried watched followed painted bought sold fed "
              "chased helped met called loved kept left brought held cooked washed opened "
              "closed",
    "move": "walked ran rode sailed flew went came moved travelled returned hurried wandered "
            "climbed swam drove marched jumped crawled danced",
    "number": "two three four five six seven eight nine ten eleven twelve twenty thirty "
              "forty fifty sixty seventy eighty ninety hundred thousand",
    "month": "january february march april june july august september october november "
             "december",
    "day": "monday tuesday wednesday thursday friday saturday sunday",
    "season": "morning evening night noon dawn dusk winter summer spring autumn",
    "adjective": "big small old young tall short happy sad quiet loud dark bright warm cold "
                 "rich poor strong weak fast slow wild gentle brave clever proud calm kind "
                 "cruel busy lazy",
    "body": "head hand foot eye ear nose mouth arm leg heart hair face back knee neck",
    "object": "hammer knife rope basket cup bowl plate spoon lamp candle book letter key coin "
              "bell box bag hat coat boot ring needle brush axe shovel ladder mirror",
    "weather": "rain snow wind storm fog sunshine cloud thunder frost mist hail",
    "country": "france spain italy china japan india egypt brazil canada mexico russia greece "
               "peru chile norway sweden poland kenya ireland turkey",
    "city": "london paris rome berlin madrid tokyo cairo lisbon vienna dublin athens oslo "
            "prague warsaw naples venice",
    "instrument": "piano violin guitar drum flute harp trumpet organ cello horn",
    "material": "wood stone iron gold glass paper wool silk clay steel copper leather cotton",
    "tree": "oak pine elm ash birch maple willow cedar palm fir yew beech",
    "vehicle": "cart wagon boat ship train car bus bicycle carriage sled canoe",
    "feeling": "joy fear anger hope love pride shame grief courage doubt envy guilt awe wonder",
    "drink": "water juice coffee beer cider broth",
    "sport": "football tennis chess golf hockey boxing rowing cricket skiing archery fencing "
             "swimming cycling",
    "bird": "robin sparrow crow swan parrot hawk pigeon heron finch raven",
    "insect": "bee ant moth beetle spider wasp butterfly locust flea gnat",
    "flower": "rose lily tulip daisy poppy orchid iris lotus jasmine lavender",
    "building": "door window roof wall floor stair gate tower chimney cellar",
    "clothing": "shirt dress scarf glove sock cloak apron belt skirt jacket",
    "sky": "moon star comet planet sky meteor galaxy",
}
TEMPLATES = [
    "the {adjective} {animal} {action} the {food} in the {place}",
    "the {person} {move} to the {place} on {day}",
    "in {month} the {person} {action} {number} {animal}",
    "the {person} {action} a {color} {object} made of {material}",
    "{country} has {weather} in the {season} and {weather} in {month}",
    "she played the {instrument} in the {season} with the {person}",
    "his {body} was {adjective} from the {weather}",
    "the {tree} near the {place} was {color} in {month}",
    "they {move} by {vehicle} from {city} to {city} in {country}",
    "the {person} felt {feeling} and {feeling} at the {place}",
    "he drank {drink} with {food} on {day} {season}",
    "the {adjective} {person} played {sport} in {city} on {day}",
    "her {object} was {color} and her {body} was {adjective}",
    "a {bird} sang in the {tree} at {season}",
    "the {insect} sat on the {flower} in the {place}",
    "the {person} {action} the {building} of the {place}",
    "he wore a {color} {clothing} on {day} and looked at the {sky}",
]
RARE = [f"word{i}" for i in range(24)]  # seen once or twice: below the vocabulary's cut (UNK)


def make_corpus(num_sentences: int = 12000, seed: int = 0) -> list:
    """The built-in corpus: ``num_sentences`` sentences from :data:`TEMPLATES`, each class's
    words drawn with Zipf-like frequencies (word ``r`` of a class with weight
    ``1 / sqrt(r + 1)``), deterministic for a ``seed``. 106,665 words for the default arguments."""
    rs = np.random.RandomState(seed)
    classes = {k: v.split() for k, v in WORDS.items()}
    weights = {k: 1.0 / np.sqrt(np.arange(1, len(v) + 1)) for k, v in classes.items()}
    words: list = []
    for i in range(num_sentences):
        template = TEMPLATES[rs.randint(len(TEMPLATES))]
        for token in template.split():
            if token.startswith("{"):
                k = token[1:-1]
                token = classes[k][rs.choice(len(classes[k]), p=weights[k] / weights[k].sum())]
            words.append(token)
        if i % 500 == 0:
            words.append(RARE[(i // 500) % len(RARE)])
    return words


# Step 2 of the tutorial: build the dictionary and replace rare words with UNK token.
def build_dataset(words, n_words):
    """Process raw inputs into a dataset."""
    count = [['UNK', -1]]
    count.extend(collections.Counter(words).most_common(n_words - 1))
    dictionary = {word: index for index, (word, _) in enumerate(count)}
    data = []
    unk_count = 0
    for word in words:
        index = dictionary.get(word, 0)
        if index == 0:  # dictionary['UNK']
            unk_count += 1
        data.append(index)
    count[0][1] = unk_count
    reversed_dictionary = dict(zip(dictionary.values(), dictionary.keys()))
    return data, count, dictionary, reversed_dictionary


# Step 3 of the tutorial: a generator of training batches for the skip-gram model.
def batch_generator(data):
    data_index = 0

    def generate_batch(batch_size, num_skips, skip_window):
        nonlocal data_index
        assert batch_size % num_skips == 0
        assert num_skips <= 2 * skip_window
        batch = np.ndarray(shape=(batch_size), dtype=np.int32)
        labels = np.ndarray(shape=(batch_size, 1), dtype=np.int32)
        span = 2 * skip_window + 1  # [ skip_window target skip_window ]
        buffer = collections.deque(maxlen=span)  # pylint: disable=redefined-builtin
        if data_index + span > len(data):
            data_index = 0
        buffer.extend(data[data_index:data_index + span])
        data_index += span
        for i in range(batch_size // num_skips):
            context_words = [w for w in range(span) if w != skip_window]
            words_to_use = random.sample(context_words, num_skips)
            for j, context_word in enumerate(words_to_use):
                batch[i * num_skips + j] = buffer[skip_window]
                labels[i * num_skips + j, 0] = buffer[context_word]
            if data_index == len(data):
                buffer.extend(data[0:span])
                data_index = span
            else:
                buffer.append(data[data_index])
                data_index += 1
        # Backtrack a little bit to avoid skipping words in the end of a batch
        data_index = (data_index + len(data) - span) % len(data)
        return batch, labels

    return generate_batch


def make_data(num_steps: int = NUM_STEPS, batch_size: int = 128, embedding_size: int = 128,
              num_skips: int = 2, skip_window: int = 1, num_sampled: int = 64,
              negatives: bool = False, seed: int = 0) -> dict:
    """Everything random both programs start from: the corpus (``words``), the validation
    words, the initial weights (the tutorial's distributions, NumPy's generator), the
    ``num_steps`` batches and, with ``negatives``, each step's NCE candidates
    (``sampled [steps, num_sampled]``, ``true_expected_count [steps, batch, 1]``,
    ``sampled_expected_count [steps, num_sampled]``)."""
    words = make_corpus(seed=seed)
    data, _, _, _ = build_dataset(words, VOCABULARY_SIZE)
    random.seed(seed)
    generate_batch = batch_generator(data)
    batches = [generate_batch(batch_size, num_skips, skip_window) for _ in range(num_steps)]
    rs = np.random.RandomState(seed)
    nce_weights = rs.standard_normal((VOCABULARY_SIZE, embedding_size))
    while np.any(np.abs(nce_weights) > 2):  # truncated_normal: redraw beyond two stddevs
        bad = np.abs(nce_weights) > 2
        nce_weights[bad] = rs.standard_normal(int(bad.sum()))
    d = {
        "words": np.asarray(words),
        "vocabulary_size": np.int64(VOCABULARY_SIZE),
        "valid_examples": rs.choice(100, 16, replace=False),
        "embeddings": rs.uniform(-1.0, 1.0, (VOCABULARY_SIZE, embedding_size)).astype(
            np.float32),
        "nce_weights": (nce_weights / math.sqrt(embedding_size)).astype(np.float32),
        "nce_biases": np.zeros(VOCABULARY_SIZE, np.float32),
        "batch_inputs": np.stack([b for b, _ in batches]),
        "batch_labels": np.stack([lab for _, lab in batches]),
    }
    if negatives:
        keys = jax.random.split(jax.random.key(seed), num_steps)
        sample = jax.jit(jax.vmap(lambda key, labels: co.nn.log_uniform_candidate_sampler(
            true_classes=labels, num_true=1, num_sampled=num_sampled, unique=True,
            range_max=VOCABULARY_SIZE, seed=key)))
        s = sample(keys, jnp.asarray(d["batch_labels"]))
        d["sampled"] = np.asarray(s.sampled_candidates).astype(np.int64)
        d["true_expected_count"] = np.asarray(s.true_expected_count)
        d["sampled_expected_count"] = np.asarray(s.sampled_expected_count)
    return d


def word2vec_basic(log_dir: str, d: dict, tsne_png: Optional[str] = None,
                   print_every: int = 2000, eval_every: int = 10000) -> dict:
    """Example of building, training and visualizing a word2vec model.

    Returns the run: ``losses`` (one per step), the final ``embeddings``, ``nce_weights``,
    ``nce_biases``, ``normalized_embeddings`` and ``similarity``."""
    # Create the directory for TensorBoard variables if there is not.
    if not os.path.exists(log_dir):
        os.makedirs(log_dir)

    # Step 1: the data (the built-in corpus instead of text8's download).
    vocabulary = [str(w) for w in d["words"]]
    print('Data size', len(vocabulary))

    # Step 2: Build the dictionary and replace rare words with UNK token.
    vocabulary_size = int(d["vocabulary_size"])
    data, count, unused_dictionary, reverse_dictionary = build_dataset(
        vocabulary, vocabulary_size)
    del vocabulary  # Hint to reduce memory.
    print('Most common words (+UNK)', count[:5])
    print('Sample data', data[:10], [reverse_dictionary[i] for i in data[:10]])

    # Step 3: Function to generate a training batch for the skip-gram model.
    generate_batch = batch_generator(data)
    batch, labels = generate_batch(batch_size=8, num_skips=2, skip_window=1)
    for i in range(8):
        print(batch[i], reverse_dictionary[batch[i]], '->', labels[i, 0],
              reverse_dictionary[labels[i, 0]])

    # Step 4: Build and train a skip-gram model.

    batch_size = 128
    embedding_size = 128  # Dimension of the embedding vector.
    skip_window = 1  # How many words to consider left and right.
    num_skips = 2  # How many times to reuse an input to generate a label.
    num_sampled = 64  # Number of negative examples to sample.
    del batch_size, skip_window, num_skips  # the batches come with d

    # We pick a random validation set to sample nearest neighbors. Here we limit
    # the validation samples to the words that have a low numeric ID, which by
    # construction are also the most frequent. These 3 variables are used only for
    # displaying model accuracy, they don't affect calculation.
    valid_size = 16  # Random set of words to evaluate similarity on.
    valid_examples = d["valid_examples"]
    valid_dataset = jnp.asarray(valid_examples, dtype=jnp.int32)

    co.reset_default_graph()
    # Look up embeddings for inputs.
    with co.name_scope('embeddings'):
        embeddings = co.Variable(d["embeddings"])
        assert embeddings.shape == (vocabulary_size, embedding_size)

    # Construct the variables for the NCE loss
    with co.name_scope('weights'):
        nce_weights = co.Variable(d["nce_weights"])
    with co.name_scope('biases'):
        nce_biases = co.Variable(d["nce_biases"])

    # Construct the SGD optimizer using a learning rate of 1.0.
    with co.name_scope('optimizer'):
        optimizer = co.train.GradientDescentOptimizer(1.0)

    @co.function
    def train_step(train_inputs, train_labels, sampled_values=None):
        def loss():
            embed = co.nn.embedding_lookup(embeddings, train_inputs)
            # Compute the average NCE loss for the batch.
            # co.nn.nce_loss draws a new sample of the negative labels each time the
            # loss is evaluated, unless sampled_values are given.
            return jnp.mean(
                co.nn.nce_loss(
                    weights=nce_weights,
                    biases=nce_biases,
                    labels=train_labels,
                    inputs=embed,
                    num_sampled=num_sampled,
                    num_classes=vocabulary_size,
                    sampled_values=sampled_values))

        return optimizer.minimize(loss)

    # Compute the cosine similarity between minibatch examples and all
    # embeddings.
    def normalized():
        norm = jnp.sqrt(jnp.sum(jnp.square(embeddings.value), 1, keepdims=True))
        return embeddings.value / norm

    @jax.jit
    def similarity_of(normalized_embeddings):
        valid_embeddings = co.nn.embedding_lookup(normalized_embeddings, valid_dataset)
        return jnp.matmul(valid_embeddings, normalized_embeddings.T)

    def similarity():
        return similarity_of(normalized())

    # Create a saver.
    saver = co.train.Saver()

    # Step 5: Begin training.
    num_steps = len(d["batch_inputs"])
    negatives = "sampled" in d
    print('Initialized')

    losses = []
    average_loss = 0
    for step in range(num_steps):
        batch_inputs, batch_labels = d["batch_inputs"][step], d["batch_labels"][step]
        sampled_values = ((d["sampled"][step], d["true_expected_count"][step],
                           d["sampled_expected_count"][step]) if negatives else None)

        # We perform one update step by calling the compiled step.
        loss_val = float(train_step(batch_inputs, batch_labels, sampled_values).loss)
        losses.append(loss_val)
        average_loss += loss_val

        if step % print_every == 0:
            if step > 0:
                average_loss /= print_every
            # The average loss is an estimate of the loss over the last 2000
            # batches.
            print('Average loss at step ', step, ': ', average_loss)
            average_loss = 0

        # Note that this is expensive (~20% slowdown if computed every 500 steps)
        if step % eval_every == 0 or step == num_steps - 1:
            sim = np.asarray(similarity())
            for i in range(valid_size):
                valid_word = reverse_dictionary[valid_examples[i]]
                top_k = 8  # number of nearest neighbors
                nearest = (-sim[i, :]).argsort()[1:top_k + 1]
                log_str = 'Nearest to %s:' % valid_word

                print(
                    log_str,
                    ', '.join([reverse_dictionary[nearest[k]] for k in range(top_k)]))
    final_embeddings = np.asarray(normalized())

    # Write corresponding labels for the embeddings.
    with open(log_dir + '/metadata.tsv', 'w') as f:
        for i in range(vocabulary_size):
            f.write(reverse_dictionary[i] + '\n')

    # Save the model for checkpoints.
    saver.save(None, os.path.join(log_dir, 'model.ckpt'))

    # Step 6: Visualize the embeddings (only with --tsne).
    if tsne_png:
        plot_tsne(final_embeddings, reverse_dictionary, tsne_png)

    return {"losses": np.asarray(losses, np.float32), "embeddings": embeddings.numpy(),
            "nce_weights": nce_weights.numpy(), "nce_biases": nce_biases.numpy(),
            "normalized_embeddings": final_embeddings, "similarity": np.asarray(similarity())}


# pylint: disable=missing-docstring
# Function to draw visualization of distance between embeddings.
def plot_tsne(final_embeddings, reverse_dictionary, filename):
    from sklearn.manifold import TSNE
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tsne = TSNE(perplexity=30, n_components=2, init='pca', max_iter=1000, method='exact')
    plot_only = 500
    low_dim_embs = tsne.fit_transform(final_embeddings[:plot_only, :])
    labels = [reverse_dictionary[i] for i in range(plot_only)]
    assert low_dim_embs.shape[0] >= len(labels), 'More labels than embeddings'
    plt.figure(figsize=(18, 18))  # in inches
    for i, label in enumerate(labels):
        x, y = low_dim_embs[i, :]
        plt.scatter(x, y)
        plt.annotate(label, xy=(x, y), xytext=(5, 2), textcoords='offset points',
                     ha='right', va='bottom')
    plt.savefig(filename)
    plt.close()


def main(argv=None) -> dict:
    # Give a folder path as an argument with '--log_dir' to save the checkpoint and the
    # metadata. Default is a log folder in the temporary directory.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--log_dir', type=str,
                        default=os.path.join(gettempdir(), 'word2vec_log'),
                        help='The log directory for the checkpoint and metadata.')
    parser.add_argument('--steps', type=int, default=NUM_STEPS)
    parser.add_argument('--write-npz', default=None,
                        help='also write the inputs, negatives included, for '
                             'word2vec_tf1_original.py --data')
    parser.add_argument('--tsne', default=None, help='plot a t-SNE of the embeddings here')
    args = parser.parse_args(argv)
    d = make_data(args.steps, negatives=args.write_npz is not None)
    if args.write_npz:
        np.savez(args.write_npz, **d)
    return word2vec_basic(args.log_dir, d, tsne_png=args.tsne)


if __name__ == '__main__':
    main(sys.argv[1:])
