//! A fake TangSengDaoDao server.
