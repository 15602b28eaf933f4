"""placeholder"""
def function(fn=None, **kw):
    raise NotImplementedError
