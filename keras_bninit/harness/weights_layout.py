"""Where `model.save_weights` puts each variable, to write it from copies.

A checkpoint is written from NumPy copies of the variables while the next
epoch trains, in the very layout of `model.save_weights` (so
`model.load_weights` reads it). `_learn_layout` learns that layout once per
model by saving it with every variable set to a marker; `_Layout.write`
then writes the same groups, attributes and datasets from copies.

Writing ~150 HDF5 objects one by one costs tens of milliseconds, a tenth of
a small model's epoch. So the layout also keeps the bytes of one file it
wrote and where each dataset's data lies in them (contiguous storage, as
h5py writes uncompressed datasets): a later file is those bytes with the
data put in place, checked once against h5py's reading of marker values.

HDF5 crashes the interpreter (a segfault in h5py's finaliser) when a file
it writes runs out of space. So every file this module makes is written
by Python's own I/O, where a full disk is an `OSError` like any other: the
template, or HDF5 built in memory and then written. Only the probe calls
`model.save_weights` on disk, and only after checking there is room.
"""

import io
import os
import uuid
import weakref

import h5py
import keras
import numpy as np

from keras_bninit.harness import _tf
from keras_bninit.harness._io import ensure_space
from keras_bninit.harness._keras_saving import fill_saving_caches

# A variable with this attribute set is data, not training state (the
# memory input path's image store): checkpoints neither copy nor write it.
DATA_ATTRIBUTE = "_keras_bninit_data"


def _state_variables(model):
    """The model's and the optimizer's variables, less data stores."""
    return [
        v
        for v in [*model.variables, *model.optimizer.variables]
        if not getattr(v, DATA_ATTRIBUTE, False)
    ]


def _snapshot(model):
    """Copies of the state variables in host memory (`read_values`)."""
    return read_values(_state_variables(model))


def assign_state(model, values):
    """Assigns `values` (from `_snapshot`) to the state variables."""
    assign_values(_state_variables(model), values)


def read_values(variables):
    """Copies of `variables`' values in host memory.

    Copies, not views: on some backends a CPU variable's NumPy value shares
    its buffer, which the next training steps would overwrite while the
    copy is being written.
    """
    batch = _batch(variables)
    if batch is not None:
        return [np.array(v) for v in batch.read()]
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def assign_values(variables, values):
    """Assigns `values[k]` to `variables[k]`."""
    batch = _batch(variables)
    if batch is not None and batch.assign(values):
        return
    for variable, value in zip(variables, values):
        variable.assign(value)


def _batch(variables):
    """`_tf.VariableBatch(variables)` on TensorFlow (TensorFlow's own ops,
    without Keras's wrapping of each variable), or None: other backends
    read and assign arrays at host speed through Keras."""
    if keras.backend.backend() != "tensorflow":
        return None
    return _tf.VariableBatch(variables)


class _Layout:
    """Where `model.save_weights` puts each variable: its file from copies.

    `model.save_weights` reads the live variables, so it cannot run while
    the next epoch trains; this writes the same groups, attributes and
    datasets from NumPy copies of the variables.
    """

    def __init__(self, groups, datasets):
        self.groups = groups  # [(path, attrs)], the root's first
        self.datasets = datasets  # [(path, variable index or array, attrs)]
        self._template = None  # the bytes of a file, see `learn_template`
        self._places = None  # [(offset, nbytes, variable index, dtype)]

    @classmethod
    def read(cls, path, markers):
        """The layout of a file saved with variable k set to `markers[k]`;
        None if a dataset is not one marker (a layer that saves something
        derived from its variables)."""
        groups, datasets = [], []

        def visit(name, obj):
            attrs = dict(obj.attrs)
            if isinstance(obj, h5py.Group):
                groups.append((name, attrs))
                return None
            data = obj[()]
            source = data  # an empty dataset is written as it is
            if np.size(data):
                source = _marker_index(data, markers)
                if source is None:
                    return False  # stops the visit
            datasets.append((name, source, attrs))
            return None

        with h5py.File(path, "r") as f:
            groups.append(("/", dict(f.attrs)))
            if f.visititems(visit) is not None:
                return None
        return cls(groups, datasets)

    def write(self, path, values):
        """Writes the file of `values` (the fast path where it was learned)."""
        if self._template is not None:
            data = bytearray(self._template)
            for offset, nbytes, index, dtype in self._places:
                raw = np.ascontiguousarray(values[index], dtype=dtype)
                if raw.nbytes != nbytes:
                    raise ValueError(
                        f"variable {index} has {raw.nbytes} bytes, the "
                        f"checkpoint layout {nbytes}"
                    )
                data[offset : offset + nbytes] = raw.tobytes()
            with open(path, "wb") as f:
                f.write(data)
            return
        self._write_objects(path, values)

    def learn_template(self, path, values, markers):
        """Learns the fast path from a file `_write_objects` wrote at `path`
        (of `values`): where each variable's data lies in its bytes. Kept
        only if writing `markers` that way reads back as `markers`."""
        places = []
        with h5py.File(path, "r") as f:
            for name, source, _ in self.datasets:
                if not isinstance(source, int):
                    continue  # written as it is, in the template
                dataset = f[name]
                dtype = dataset.dtype
                nbytes = int(np.prod(dataset.shape)) * dtype.itemsize
                if nbytes == 0:
                    continue
                offset = dataset.id.get_offset()
                if offset is None or dataset.id.get_storage_size() != nbytes:
                    return False  # chunked or compact: no fixed place
                if dtype.byteorder == ">":
                    return False
                places.append((offset, nbytes, source, dtype))
        with open(path, "rb") as f:
            template = f.read()
        self._template, self._places = template, places
        check = f"{path}.check"
        try:
            self.write(check, markers)
            if self.matches(check, markers):
                return True
        except (OSError, ValueError):
            pass
        finally:
            if os.path.lexists(check):
                os.remove(check)
        self._template = self._places = None
        return False

    def _write_objects(self, path, values):
        """Builds the file in memory, then writes its bytes (see above)."""
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            for name, attrs in self.groups:
                f.require_group(name).attrs.update(attrs)
            for name, source, attrs in self.datasets:
                f.create_dataset(name, data=self._data(source, values))
                f[name].attrs.update(attrs)
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())

    def matches(self, path, values):
        """Whether the file at `path` is what `write` makes of `values`."""
        with h5py.File(path, "r") as f:
            for name, source, _ in self.datasets:
                data = np.asarray(self._data(source, values))
                saved = f.get(name)
                if saved is None or saved.dtype != data.dtype:
                    return False
                if not np.array_equal(saved[()], data):
                    return False
        return True

    @staticmethod
    def _data(source, values):
        return values[source] if isinstance(source, int) else source


def _learn_layout(model, values, directory):
    """The `_Layout` of `model`, or None where it cannot be learned.

    Saves the model with every variable set to a marker (its index plus 1)
    and reads back which dataset holds which marker; then, the variables
    given `values` back, checks that the layout writes the very file
    `model.save_weights` writes. None when a dtype cannot hold its marker
    or a dataset is not one variable's value as it is (a layer that saves
    something derived): the checkpoints are then written by
    `model.save_weights` itself.
    """
    try:
        markers = [
            np.full(v.shape, k + 1, dtype=v.dtype) for k, v in enumerate(values)
        ]
    except (OverflowError, TypeError, ValueError):
        return None
    if any(m.size and m.flat[0] != k + 1 for k, m in enumerate(markers)):
        return None
    # HDF5 must not run out of space (see above): room for the probe and
    # the template's check file, which exist together.
    ensure_space(directory, 2 * sum(v.nbytes for v in values))
    probe = os.path.join(directory, f".tmp-{uuid.uuid4().hex}.weights.h5")
    try:
        fill_saving_caches()
        try:
            assign_state(model, markers)
            model.save_weights(probe)
        finally:
            assign_state(model, values)
        layout = _Layout.read(probe, markers)
        if layout is None:
            return None
        model.save_weights(probe)
        if not layout.matches(probe, values):
            return None
        layout._write_objects(probe, values)
        layout.learn_template(probe, values, markers)
        return layout
    finally:
        if os.path.lexists(probe):
            os.remove(probe)


def _marker_index(data, markers):
    """The index of the marker that `data` equals, or None."""
    try:
        index = int(np.ravel(data)[0]) - 1
    except (TypeError, ValueError, OverflowError):
        return None
    if 0 <= index < len(markers) and np.array_equal(data, markers[index]):
        return index
    return None


# Learned layouts, by model: a shared program's runs learn it once.
_LAYOUTS = weakref.WeakKeyDictionary()


def cached_layout(model, variables, learn):
    """The `_Layout` of `model` for its state `variables`, learned by
    `learn()` the first time (None results are kept too), while the
    variables stay the same objects, shapes and dtypes."""
    signature = tuple((id(v), tuple(v.shape), str(v.dtype)) for v in variables)
    try:
        cached = _LAYOUTS.get(model)
    except TypeError:  # not weakly referable
        return learn()
    if cached is not None and cached[0] == signature:
        return cached[1]
    layout = learn()
    _LAYOUTS[model] = (signature, layout)
    return layout
