"""read_video seeks to far frames, and gives the same frames as decoding from the start."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from vidlada_jax import video
from vidlada_jax.preprocess import evaluation_frame_indices, training_frame_indices

HAS_X264 = 'libx264' in av.codecs_available
FPS = 30
B_PICTURE = 3  # FFmpeg's AV_PICTURE_TYPE_B, which PyAV 18 hands back as a plain int


def moving_pattern(index: int, height: int = 48, width: int = 64) -> np.ndarray:
  """A gradient that shifts each frame and a bar that moves: every frame differs from the last."""
  frame = np.zeros((height, width, 3), np.uint8)
  frame[..., 0] = (np.arange(width) * 4 + index * 3) % 256
  frame[..., 1] = (np.arange(height)[:, None] * 5 + index * 7) % 256
  frame[(index * 2) % height, :, 2] = 255
  return frame


def write_clip(path: Path, num_frames: int, codec: str, options: dict[str, str]) -> Path:
  return video.write_video(path, (moving_pattern(i) for i in range(num_frames)), FPS,
                           codec=codec, options=options)


def decode_everything(path: Path) -> tuple[np.ndarray, list[int]]:
  """The test's own decode from the start, independent of vidlada_jax.video."""
  with av.open(str(path)) as container:
    frames = list(container.decode(video=0))
    return (np.stack([f.to_ndarray(format='rgb24') for f in frames]),
            [int(f.pict_type) for f in frames])


CLIPS = {  # name: (frames, codec, encoder options)
    'h264_short_gop': (300, 'libx264', {'g': '10', 'bf': '0', 'preset': 'ultrafast'}),
    'h264_long_gop': (300, 'libx264', {'g': '250', 'keyint_min': '250', 'sc_threshold': '0',
                                       'bf': '0', 'preset': 'ultrafast'}),
    'h264_b_frames': (200, 'libx264', {'g': '40', 'bf': '2', 'b_strategy': '0',
                                       'preset': 'medium'}),
    'mpeg4': (150, 'mpeg4', {'g': '30'}),
    'mpeg4_b_frames': (90, 'mpeg4', {'g': '24', 'bf': '2'}),
}


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  root = tmp_path_factory.mktemp('seek_clips')
  made = {}
  for name, (num_frames, codec, options) in CLIPS.items():
    if codec == 'libx264' and not HAS_X264:
      continue
    made[name] = write_clip(root / f'{name}.mp4', num_frames, codec, options)
  return made


def picks(total: int) -> dict[str, list[int]]:
  return {
      'evaluation': list(evaluation_frame_indices(total, FPS, 64)),  # one per second
      'evaluation_linspace': list(evaluation_frame_indices(total, FPS, 3)),
      'training': list(training_frame_indices(total, 8)),
      'training_repeats': list(training_frame_indices(total, total + 17)),  # repeated frames
      'last_frame': [total - 1],
      'scattered': [total - 1, 0, total // 2, total // 2 + 1, 3, total - 2, total // 2],
  }


@pytest.mark.parametrize('name', list(CLIPS))
def test_seeking_gives_the_frames_of_a_full_decode(clips, name):
  if name not in clips:
    pytest.skip('libx264 is not available')
  everything, kinds = decode_everything(clips[name])
  if name.endswith('b_frames'):
    assert B_PICTURE in kinds, 'the encoder made no B-frames: this case would test nothing new'
  for pick, indices in picks(len(everything)).items():
    wanted = sorted(set(indices))
    decoded, stats = video._read_frames(clips[name], wanted)
    assert not stats.sequential, f'{name}: seeking was refused for {pick}'
    assert sorted(decoded) == wanted, (name, pick)
    for i in wanted:
      np.testing.assert_array_equal(decoded[i], everything[i], err_msg=f'{name} {pick} frame {i}')


@pytest.mark.parametrize('training', [False, True])
def test_read_video_matches_a_full_decode(clips, training):
  path = clips.get('h264_b_frames', clips['mpeg4'])
  everything, _ = decode_everything(path)
  clip = video.read_video(path, 16, training=training)
  assert clip.total_frames == len(everything)
  np.testing.assert_array_equal(clip.frames, everything[clip.indices])


def test_far_frames_are_reached_by_seeking_not_by_decoding_everything(clips):
  name = 'h264_short_gop' if 'h264_short_gop' in clips else 'mpeg4'
  keyframe_interval = int(CLIPS[name][2]['g'])
  total = len(decode_everything(clips[name])[0])
  wanted = [0, total // 2, total - 1]
  decoded, stats = video._read_frames(clips[name], wanted)
  assert stats.seeks == 2 and not stats.sequential
  assert sorted(decoded) == wanted
  # Each seek lands on the keyframe at or before its target, less than an interval before it.
  assert stats.frames_decoded <= 1 + 2 * keyframe_interval < total - 1


def test_long_gop_seeks_land_on_the_one_keyframe_and_near_frames_decode_forward(clips):
  if 'h264_long_gop' not in clips:
    pytest.skip('libx264 is not available')
  # Keyframes at 0 and 250 only: frame 260 is reached from 250, not by decoding 261 frames.
  decoded, stats = video._read_frames(clips['h264_long_gop'], [260, 270, 299])
  assert stats.seeks == 1 and stats.frames_decoded == 299 - 250 + 1
  assert sorted(decoded) == [260, 270, 299]


def test_a_file_that_cannot_seek_is_decoded_from_its_start(clips, monkeypatch, caplog):
  def refuse(*args, **kwargs):
    raise av.error.PermissionError(1, 'seeking refused (as by a container without an index)')

  monkeypatch.setattr(av.container.InputContainer, 'seek', refuse, raising=False)
  path = clips['mpeg4']
  everything, _ = decode_everything(path)
  with caplog.at_level('INFO', logger='vidlada_jax.video'):
    decoded, stats = video._read_frames(path, [5, 100, 149])
  assert stats.sequential
  assert 'seeking failed' in caplog.text and 'seeking refused' in caplog.text  # and it says so
  for i in (5, 100, 149):
    np.testing.assert_array_equal(decoded[i], everything[i])


def test_a_truncated_file_is_still_named_as_truncated(clips, tmp_path):
  data = clips['mpeg4'].read_bytes()
  cut = tmp_path / 'cut.mp4'
  cut.write_bytes(data[:len(data) * 2 // 3])
  with pytest.raises(video.VideoError, match='cut.mp4'):
    video.read_video(cut, 64, training=True)


def test_write_video_never_leaves_a_partial_file(tmp_path):
  path = video.write_video(tmp_path / 'clip.mp4', np.stack([moving_pattern(i) for i in range(4)]))
  before = path.read_bytes()

  def frames_then_failure():
    yield moving_pattern(0)
    raise RuntimeError('the renderer failed')

  with pytest.raises(RuntimeError, match='the renderer failed'):
    video.write_video(path, frames_then_failure())
  with pytest.raises(ValueError, match='no frames to write'):
    video.write_video(path, [])
  assert path.read_bytes() == before  # the earlier video is untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ['clip.mp4']  # no partial file left
  assert video.read_video(path, 4).total_frames == 4
