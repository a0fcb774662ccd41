//! placeholder: the search service (see issue 4)
