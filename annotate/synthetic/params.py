"""How hard the synthetic world is (`WorldParams`, with its checks) and what its objects can be: their colours,
shapes, textures and size words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from annotate.errors import ConfigError


@dataclass
class WorldParams:
    """How hard the synthetic world is. Quality floors (LK tracking, GrabCut masks) are measured on these defaults."""

    width: int = 256  # frame size in pixels (even: yuv420p)
    height: int = 256
    frames: int = 100  # T frames per clip (the design's 100 samples then map 1:1 onto source frames)
    fps: float = 10.0  # 10 s clips; also the default track_fps, so tracking sees every frame
    min_objects: int = 2  # objects per clip, uniform in [min, max]; at most one per shape (7 shapes)
    max_objects: int = 4
    # Object size (its longer side before scale change) as a share of the shorter frame side: 0.14-0.27 is about
    # 36-69 px at 256x256, large enough for GrabCut and for a 21 px LK window to sit on the object.
    min_size: float = 0.14
    max_size: float = 0.27
    # Cruising speed in px/frame (a few px/frame: LK's pyramid follows up to ~10; exits may speed up to leave in time).
    min_speed: float = 0.8
    max_speed: float = 2.5
    speed_variation: float = 0.5  # speed swings by up to +-50% along the path (accelerations)
    max_turn: float = 0.06  # rad/frame of random wandering of the heading (smooth curves)
    p_stop: float = 0.35  # chance that an object stops for a while (1-2.5 s) mid-clip
    stop_seconds: tuple[float, float] = (1.0, 2.5)
    max_scale_change: float = 0.3  # an object's scale drifts smoothly to at most x1.3 or /1.3 over the clip
    max_rotation_deg: float = 20.0  # and it turns by at most this much over the clip
    pan_speed: float = 0.8  # px/frame of camera pan (background motion), along a smooth curve
    # Shares of clips with a planned event (a plan that cannot be kept, e.g. no moment when both objects are well
    # inside the frame, is dropped); other objects steer clear of each other, so chance overlaps are rare.
    p_occlusion: float = 0.5  # two objects are made to cross, one partly hiding the other (about 0.4 realised)
    p_late_entry: float = 0.3  # an object enters the frame after frame 0
    p_exit: float = 0.3  # an object leaves the frame before the end
    # Given boxes (the `given` grounder) sit at the first frame where an object shows at least this share of its
    # best visible area: 0 gives the literal first visible frame, where an entering object is a 1-px sliver.
    given_box_min_visible: float = 0.8
    crf: int = 18  # x264 quality: fine texture survives, so the decoded video still matches the ground truth
    preset: str = "veryfast"  # x264 speed preset (encoding is most of a clip's cost)

    def validate(self) -> "WorldParams":
        def bad(name: str, why: str):
            raise ConfigError(f"WorldParams.{name}: {why}")

        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            bad("width/height", f"need even sizes >= 16 (yuv420p), got {self.width}x{self.height}")
        if self.frames < 4:
            bad("frames", f"need at least 4, got {self.frames}")
        if self.fps <= 0:
            bad("fps", f"must be > 0, got {self.fps}")
        if not 1 <= self.min_objects <= self.max_objects <= len(SHAPES):
            bad("min_objects/max_objects", f"need 1 <= min <= max <= {len(SHAPES)}")
        if not 0 < self.min_size <= self.max_size < 1:
            bad("min_size/max_size", "need 0 < min <= max < 1 (shares of the shorter side)")
        if not 0 <= self.min_speed <= self.max_speed:
            bad("min_speed/max_speed", "need 0 <= min <= max")
        for name in ("p_stop", "p_occlusion", "p_late_entry", "p_exit", "given_box_min_visible", "speed_variation"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.max_scale_change < 0 or self.pan_speed < 0 or self.max_turn < 0:
            bad("max_scale_change/pan_speed/max_turn", "must be >= 0")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "WorldParams":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"WorldParams: unknown key(s) {unknown}")
        d = dict(d)
        if "stop_seconds" in d:
            d["stop_seconds"] = tuple(d["stop_seconds"])
        return cls(**d).validate()


COLOURS = {  # name -> RGB, saturated so they stand apart from the muted background
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 30),
    "purple": (145, 60, 195),
    "white": (245, 245, 245),
    "pink": (245, 120, 185),
}
SHAPES = ("square", "rectangle", "triangle", "ball", "diamond", "star", "hexagon")
TEXTURES = ("striped", "checkered", "dotted")
SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}  # not "little": spaCy reads "a little" as an adverb


def params_dict(p: WorldParams) -> dict:
    d = asdict(p)
    d["stop_seconds"] = list(d["stop_seconds"])
    return d
