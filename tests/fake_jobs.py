"""A loop.Job test double: every hook does nothing; tests override run_block."""


class NullJob:
  """A loop.Job whose segments need no setup, produce no metrics and checkpoint nothing."""

  def enter(self, segment):
    pass

  def run_block(self, position, num_steps):
    del position, num_steps
    return None

  def end_epoch(self, segment, epoch, means, eta):
    pass

  def exit(self, segment):
    pass

  def checkpoint(self):
    return {}, {}
