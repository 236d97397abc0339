//! Seeded, realistic-looking chat text in Chinese and English, shared by the fakes.
//!
//! Everything here is a pure function of the random generator passed in, so a world
//! generated from a seed always reads the same. The phrase pools are small but combine
//! into many thousands of distinct sentences, mixing everyday chat, work talk, emoji,
//! numbers and the odd English word inside Chinese (as real chats do).

use rand::seq::SliceRandom;
use rand::Rng;

/// Which language a sentence is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Chinese,
    English,
}

const ZH_SUBJECTS: &[&str] = &[
    "我",
    "你",
    "我们",
    "大家",
    "老板",
    "产品经理",
    "客户",
    "小王",
    "老李",
    "张总",
    "他们",
    "测试同学",
    "运维",
    "前端",
    "后端",
    "设计师",
    "财务",
    "妈妈",
    "我爸",
    "室友",
];
const ZH_TIMES: &[&str] = &[
    "今天",
    "明天上午",
    "下午三点",
    "晚上",
    "周末",
    "下周一",
    "刚才",
    "昨天晚上",
    "月底之前",
    "一会儿",
    "中午",
    "这两天",
];
const ZH_VERBS: &[&str] = &[
    "看一下",
    "确认了",
    "发布",
    "讨论",
    "整理好",
    "重新部署",
    "提交了",
    "检查",
    "安排",
    "修复了",
    "更新",
    "准备",
    "上传了",
    "对接",
    "回复",
    "试一下",
    "搞定了",
    "推迟",
];
const ZH_OBJECTS: &[&str] = &[
    "这个需求",
    "接口文档",
    "新版本",
    "会议纪要",
    "报销单",
    "测试用例",
    "数据库迁移",
    "发布计划",
    "周报",
    "合同",
    "设计稿",
    "服务器日志",
    "那个bug",
    "PPT",
    "年会节目",
    "机票",
    "快递",
    "房租",
    "项目排期",
    "代码评审",
];
const ZH_TAILS: &[&str] = &[
    "",
    "",
    "",
    "吧",
    "啊",
    "了",
    "哈",
    "呢",
    "哦",
    "吗？",
    "！",
    "。",
    "～",
    "，辛苦了",
    "，谢谢",
    "，有问题随时说",
    "，别忘了",
];
const ZH_SHORT: &[&str] = &[
    "好的",
    "收到",
    "没问题",
    "哈哈哈",
    "可以",
    "稍等",
    "我看看",
    "👍",
    "辛苦了",
    "谢谢！",
    "在吗？",
    "马上到",
    "好嘞",
    "明白",
    "等我一下",
    "OK",
    "晚安",
    "早上好",
    "行",
    "嗯嗯",
    "太棒了🎉",
    "[微笑]",
    "在开会，晚点回你",
    "收到，马上处理",
];
const ZH_CHAT: &[&str] = &[
    "中午一起吃饭吗？楼下新开了一家面馆",
    "今天地铁好挤，差点迟到",
    "这个周末去爬山吧，天气不错",
    "刚下班，累死了",
    "你那边网络是不是有问题？消息一直发不出去",
    "晚上有空打个电话吗",
    "我把文件放群里了，大家看一下",
    "服务器又报警了，CPU 飙到 95%",
    "测试环境已经部署好了，可以开始验证",
    "这个方案我觉得还可以再优化一下",
    "明天的会改到十点了",
    "生日快乐！🎂",
    "外卖到了，谁的？",
    "周五团建，记得报名",
    "新版本发布成功，感谢大家",
    "这个价格有点贵，再看看别家",
];

const EN_SUBJECTS: &[&str] = &[
    "I",
    "We",
    "The client",
    "Our team",
    "Alice",
    "Bob",
    "The build",
    "My manager",
    "Everyone",
    "The designer",
    "Support",
    "QA",
];
const EN_VERBS: &[&str] = &[
    "just pushed",
    "will review",
    "fixed",
    "needs",
    "is updating",
    "shipped",
    "reverted",
    "is testing",
    "scheduled",
    "uploaded",
    "merged",
    "can't find",
];
const EN_OBJECTS: &[&str] = &[
    "the release notes",
    "the new API",
    "the hotfix",
    "the budget",
    "the slides",
    "the migration",
    "the login page",
    "the contract",
    "the onboarding doc",
    "the dashboard",
    "the logs",
    "the flight tickets",
];
const EN_TIMES: &[&str] = &[
    "",
    "",
    "today",
    "tomorrow morning",
    "before Friday",
    "this afternoon",
    "tonight",
    "next week",
    "in an hour",
    "after lunch",
];
const EN_SHORT: &[&str] = &[
    "ok",
    "sure",
    "thanks!",
    "lol",
    "on my way",
    "sounds good",
    "👍",
    "done",
    "np",
    "brb",
    "see you soon",
    "got it",
    "nice 🎉",
    "haha",
    "one sec",
    "let me check",
];

const ZH_SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "罗", "高",
];
const ZH_GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明",
    "超", "秀英", "霞", "平", "刚", "桂英", "晨", "思远", "雨桐", "子涵", "浩然", "欣怡",
];
const EN_FIRST: &[&str] = &[
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Ivy", "Jack", "Kate",
    "Leo", "Mia", "Noah", "Olivia", "Paul", "Quinn", "Ruby", "Sam", "Tina",
];
const EN_LAST: &[&str] = &[
    "Smith", "Chen", "Wang", "Brown", "Lee", "Garcia", "Miller", "Davis", "Lin", "Wilson", "Zhang",
    "Taylor",
];
const GROUP_STEMS: &[&str] = &[
    "项目组",
    "技术交流群",
    "家人群",
    "大学同学",
    "周末羽毛球",
    "产品讨论",
    "运维值班",
    "读书会",
    "前端小分队",
    "Release crew",
    "Hiking club",
    "Design review",
    "租房互助",
    "年会筹备",
    "Backend team",
    "Book club",
];
const PLACES: &[&str] = &[
    "北京市朝阳区望京SOHO",
    "上海市浦东新区陆家嘴环路1000号",
    "深圳市南山区科技园",
    "杭州市西湖区文三路",
    "广州市天河区珠江新城",
    "成都市高新区天府三街",
    "Starbucks Reserve Roastery",
    "Pier 39, San Francisco",
];

/// Pick one element of a non-empty pool.
pub fn pick<'a, R: Rng + ?Sized>(rng: &mut R, pool: &'a [&'a str]) -> &'a str {
    pool.choose(rng).copied().unwrap_or("")
}

/// One sentence in the given language.
pub fn sentence<R: Rng + ?Sized>(rng: &mut R, lang: Lang) -> String {
    match lang {
        Lang::Chinese => match rng.gen_range(0..10) {
            0..=2 => pick(rng, ZH_SHORT).to_string(),
            3..=4 => pick(rng, ZH_CHAT).to_string(),
            _ => format!(
                "{}{}{}{}{}",
                pick(rng, ZH_SUBJECTS),
                pick(rng, ZH_TIMES),
                pick(rng, ZH_VERBS),
                pick(rng, ZH_OBJECTS),
                pick(rng, ZH_TAILS)
            ),
        },
        Lang::English => match rng.gen_range(0..10) {
            0..=2 => pick(rng, EN_SHORT).to_string(),
            _ => {
                let time = pick(rng, EN_TIMES);
                let mut s = format!(
                    "{} {} {}",
                    pick(rng, EN_SUBJECTS),
                    pick(rng, EN_VERBS),
                    pick(rng, EN_OBJECTS)
                );
                if !time.is_empty() {
                    s.push(' ');
                    s.push_str(time);
                }
                s.push_str(if rng.gen_bool(0.2) { "?" } else { "." });
                s
            }
        },
    }
}

/// A chat message: mostly one sentence, sometimes two or three, rarely a long paragraph.
pub fn message<R: Rng + ?Sized>(rng: &mut R, lang: Lang) -> String {
    let n = match rng.gen_range(0..100) {
        0..=74 => 1,
        75..=94 => 2,
        95..=98 => 3,
        _ => 8,
    };
    let sep = match lang {
        Lang::Chinese => "，",
        Lang::English => " ",
    };
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push_str(sep);
        }
        // Code-switching: a Chinese speaker drops an English phrase now and then.
        let l = if lang == Lang::Chinese && rng.gen_bool(0.05) {
            Lang::English
        } else {
            lang
        };
        out.push_str(&sentence(rng, l));
    }
    out
}

/// A person's display name.
pub fn person_name<R: Rng + ?Sized>(rng: &mut R, lang: Lang) -> String {
    match lang {
        Lang::Chinese => format!("{}{}", pick(rng, ZH_SURNAMES), pick(rng, ZH_GIVEN)),
        Lang::English => format!("{} {}", pick(rng, EN_FIRST), pick(rng, EN_LAST)),
    }
}

/// A group chat's name.
pub fn group_name<R: Rng + ?Sized>(rng: &mut R) -> String {
    let stem = pick(rng, GROUP_STEMS);
    if rng.gen_bool(0.3) {
        format!("{stem}{}", rng.gen_range(1..=9))
    } else {
        stem.to_string()
    }
}

/// A street address or point of interest.
pub fn place<R: Rng + ?Sized>(rng: &mut R) -> String {
    pick(rng, PLACES).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn same_seed_same_text() {
        let a: Vec<String> = {
            let mut rng = StdRng::seed_from_u64(7);
            (0..50).map(|_| message(&mut rng, Lang::Chinese)).collect()
        };
        let b: Vec<String> = {
            let mut rng = StdRng::seed_from_u64(7);
            (0..50).map(|_| message(&mut rng, Lang::Chinese)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn text_is_varied() {
        let mut rng = StdRng::seed_from_u64(1);
        let distinct: std::collections::HashSet<String> =
            (0..500).map(|_| message(&mut rng, Lang::English)).collect();
        assert!(distinct.len() > 200, "only {} distinct", distinct.len());
    }
}
